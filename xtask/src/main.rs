//! `cargo xtask`: the project's chores, in Rust.
//!
//! - `demo`: a collector and an agent on loopback, then `pikett status`.
//! - `test`: installs the Debian packages the tests use, then `cargo test --workspace`.
//! - `bench ingest|paging|checks|agent|soak`: the benchmarks whose figures go in BENCHMARKS.md.
//! - `rpm`: static musl binaries and the agent's and collector's RPMs in `target/dist/`.

mod bench;
mod rpm;
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
    /// Start a collector and an agent on loopback (embedded defaults, sled), show `pikett status` and `pikett hosts`.
    Demo {
        /// How long to let them run before showing the status.
        #[arg(long, default_value_t = 6)]
        seconds: u64,
        /// Keep both running until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
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
        Command::Demo { seconds, keep } => util::demo(seconds, keep),
        Command::Test { args } => util::test(&args),
        Command::Bench { which } => bench::run(which),
        Command::Rpm(args) => rpm::run(args),
    }
}
