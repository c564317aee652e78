//! `pikett`, the staff CLI: talks to the collector's admin service.
//! Tables for people, `--output json` (JSON lines) for scripts.
//! Exit codes: 0 success, 1 refused or failed, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pikett_collector::cli;

#[derive(Parser)]
#[command(name = "pikett", version, about = "pikett staff CLI")]
struct Cli {
    /// The collector's gRPC address.
    #[arg(long, global = true, env = "PIKETT_COLLECTOR", default_value = "http://127.0.0.1:9740")]
    collector: String,
    /// CA certificate that signed the collector's certificate (for https://).
    #[arg(long, global = true, env = "PIKETT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// One screen: hosts up/down, open faults by severity, who is on call.
    Status,
    /// Every known host with its status, last contact and agent version.
    Hosts,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pikett: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = args.output == Output::Json;
    let result = rt.block_on(async {
        let mut client = cli::Client::connect(&args.collector, args.ca_file.as_deref()).await?;
        let text = match args.command {
            Command::Status => cli::status(&mut client, json).await?,
            Command::Hosts => cli::hosts(&mut client, json).await?,
        };
        print!("{text}");
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pikett: {e:#}");
            ExitCode::from(1)
        }
    }
}
