//! `cargo xtask`: the project's chores, in Rust.
//!
//! - `demo`: a collector, an agent and an SMS gateway stand-in on loopback, with people on
//!   call and a check to break; prints what to try (`demo.rs`).
//! - `test`: installs the Debian packages the tests use, then `cargo test --workspace`.
//! - `bench ingest|compare|paging|checks|agent|soak`: the benchmarks whose figures go in BENCHMARKS.md.
//! - `rpm`: static musl binaries and the agent's and collector's RPMs in `target/dist/`.

mod bench;
mod demo;
mod rpm;
// `util::demo` is superseded by `demo.rs` and is left for util.rs's owner to delete.
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a collector, an agent and an SMS gateway stand-in on loopback, with a customer, people
    /// on call and a check to break; print the commands to try. Runs until Ctrl-C.
    Demo(demo::Args),
    /// Install what the tests need (Debian packages, when run as root) and run `cargo test --workspace`.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks (release builds); figures go to BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// Build static (musl) binaries in the `dist` profile and the RPMs
    /// `target/dist/pikett-{agent,collector}-VERSION-RELEASE.x86_64.rpm`.
    Rpm(rpm::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
        Command::Test { args } => util::test(&args),
        Command::Bench { which } => bench::run(which),
        Command::Rpm(args) => rpm::run(args),
    }
}
