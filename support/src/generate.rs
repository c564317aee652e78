//! Shell completions and man pages, generated from a program's own CLI definition
//! (`PROGRAM --generate bash|zsh|fish|man`): the packages ship what the binary prints,
//! so they can never disagree with it.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

/// What `--generate` can produce.
pub const KINDS: [&str; 4] = ["bash", "zsh", "fish", "man"];

/// When the arguments are `--generate KIND`, prints it for `C` and returns the exit code;
/// otherwise `None` and the program goes on. Kept out of `--help`: it is for packagers.
pub fn from_args<C: CommandFactory>() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("--generate") {
        return None;
    }
    let kind = args.get(2).map(String::as_str).unwrap_or_default();
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    let mut out = std::io::stdout().lock();
    let shell = match kind {
        "bash" => Some(clap_complete::Shell::Bash),
        "zsh" => Some(clap_complete::Shell::Zsh),
        "fish" => Some(clap_complete::Shell::Fish),
        _ => None,
    };
    let written = match kind {
        _ if shell.is_some() => {
            if let Some(shell) = shell {
                clap_complete::generate(shell, &mut cmd, &name, &mut out);
            }
            Ok(())
        }
        "man" => clap_mangen::Man::new(cmd).render(&mut out),
        other => {
            eprintln!("{name}: --generate {other:?}: expected one of {}", KINDS.join(", "));
            return Some(ExitCode::from(2));
        }
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{name}: --generate {kind}: {e}");
            Some(ExitCode::from(1))
        }
    }
}
