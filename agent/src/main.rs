//! The `pikett-agent` command line: parse, build, run, map errors to exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pikett_agent::config::AgentConfig;
use pikett_agent::probes::{self, MemoryState, SharedState};

#[derive(Parser)]
#[command(
    name = "pikett-agent",
    version,
    about = "pikett's host agent: probes, durable spool, stream to the collector"
)]
struct Cli {
    /// The agent's configuration file.
    #[arg(long, global = true, default_value = "/etc/pikett/agent.toml", env = "PIKETT_AGENT_CONFIG")]
    config: PathBuf,
    /// Log lines on stderr: `text` (colours only on a terminal) or `json` (one object per line).
    #[arg(long, global = true, default_value = "text", env = "PIKETT_LOG_FORMAT")]
    log_format: pikett_support::service::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: poll every probe on its interval, spool, stream. SIGHUP reloads the
    /// configuration (probes and checks apply at once; an invalid file is refused and logged).
    Run,
    /// Poll every (or one) probe once, all at once (command checks up to
    /// max_concurrent_commands), and print each result as a JSON line; sends nothing.
    Test {
        /// Only this probe (host, redfish, services, checks, patches, backups).
        #[arg(long)]
        probe: Option<String>,
    },
    /// Validate the configuration: exit 0, or print each error with line and column and exit 2.
    CheckConfig,
    /// Obtain the agent's client certificate from the collector with a one-time ticket
    /// (`pikett-collector ticket HOST`); writes [tls] ca_file, cert_file and key_file.
    Enroll {
        /// The collector's URL, e.g. https://pikett.example.net:9740.
        #[arg(long)]
        collector: String,
        #[arg(long)]
        ticket: String,
    },
}

fn main() -> ExitCode {
    if let Some(code) = pikett_support::generate::from_args::<Cli>() {
        return code;
    }
    let cli = Cli::parse();
    pikett_support::service::init_logging(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let config = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pikett-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::CheckConfig => {
                // Building the probes validates what serde cannot (files, per-check keys).
                let state: SharedState = Arc::new(MemoryState::default());
                let built = probes::from_config(&config, state);
                if !built.failures.is_empty() {
                    for e in &built.failures {
                        eprintln!("{}: {e}", cli.config.display());
                    }
                    return Ok(ExitCode::from(2));
                }
                println!("{}: OK", cli.config.display());
                Ok(ExitCode::SUCCESS)
            }
            Command::Test { probe } => test(&config, probe.as_deref()).await.map(|()| ExitCode::SUCCESS),
            Command::Run => {
                let host_id = config.resolved_host_id().map_err(anyhow::Error::msg)?;
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    pikett_support::wait_for_signal().await;
                    tracing::info!("shutting down");
                    pikett_support::service::notify_stopping();
                    let _ = tx.send(true);
                });
                pikett_agent::runtime::run(config, cli.config.clone(), host_id, rx).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Enroll { collector, ticket } => {
                let done = pikett_agent::enroll::enroll(&config, &collector, &ticket).await?;
                println!("{done}");
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // A statvfs stuck on a hung mount holds a blocking thread; dropping the runtime
    // would wait for it forever, so give blocking work a moment, then leave it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pikett-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn test(config: &AgentConfig, only: Option<&str>) -> anyhow::Result<()> {
    let state: SharedState = Arc::new(MemoryState::default());
    let built = probes::from_config(config, state);
    // Shown, and the probe's UNKNOWN results below say it too: as the daemon would run.
    for e in &built.failures {
        eprintln!("pikett-agent: {e}");
    }
    let probes = built.into_probes();
    let names: Vec<String> = probes.iter().map(|p| p.name().to_string()).collect();
    if let Some(only) = only
        && !names.iter().any(|n| n == only)
    {
        anyhow::bail!("no probe {only:?} is configured (configured: {})", names.join(", "));
    }
    // All at once, as `run` would: hundreds of checks one after another would take
    // minutes. Printed in the configured order.
    let polls = probes.into_iter().filter(|p| only.is_none_or(|o| o == p.name())).map(|mut probe| async move {
        let observations = probe.poll().await;
        probe.shutdown().await;
        observations
    });
    let results = futures::future::join_all(polls).await;
    let mut stdout = std::io::stdout().lock();
    for o in results.iter().flatten() {
        writeln!(stdout, "{}", serde_json::to_string(o)?)?;
    }
    Ok(())
}
