//! The `pikett-collector` command line: parse, build, run, map errors to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pikett_collector::config::CollectorConfig;

const DEFAULT_CONFIG: &str = "/etc/pikett/collector.toml";

#[derive(Parser)]
#[command(name = "pikett-collector", version, about = "pikett's central collector")]
struct Cli {
    /// The configuration file. Without it, and with no file at the default
    /// path, embedded defaults apply (loopback, sled under data_dir).
    #[arg(long, global = true, env = "PIKETT_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The service: gRPC on `listen`, HTTP (/metrics, /healthz, /readyz) on `http_listen`.
    Serve,
    /// Validate the configuration: exit 0, or print each error and exit 2.
    CheckConfig,
    /// SLA availability of one month from files, offline (SPEC.md section 3.4).
    Sla {
        /// TOML with the keys of one `[sla.NAME]` table at its top level.
        #[arg(long)]
        contract: PathBuf,
        /// CSV `host,start,end,cause`.
        #[arg(long)]
        outages: PathBuf,
        /// CSV `host,start,end,announced`.
        #[arg(long)]
        maintenance: Option<PathBuf>,
        /// The calendar month in the contract's time zone, `YYYY-MM`.
        #[arg(long)]
        month: String,
        #[arg(long, value_enum, default_value_t = SlaOutput::Table)]
        output: SlaOutput,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SlaOutput {
    Table,
    Json,
    Csv,
}

/// The offline SLA report: needs no config and no running collector.
fn sla(contract: &Path, outages: &Path, maintenance: Option<&Path>, month: &str, output: SlaOutput) -> ExitCode {
    use pikett_core::sla;
    match pikett_collector::offline_sla::run_offline_files(contract, outages, maintenance, month) {
        Ok(rows) => {
            let text = match output {
                SlaOutput::Table => sla::render_table(&rows),
                SlaOutput::Json => sla::render_json_lines(&rows),
                SlaOutput::Csv => sla::render_csv(&rows),
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pikett-collector sla: {e}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<(String, CollectorConfig), Vec<String>> {
    match path {
        Some(p) => CollectorConfig::load(p)
            .map(|c| (p.display().to_string(), c))
            .map_err(|errs| errs.iter().map(ToString::to_string).collect()),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => load_config(Some(&PathBuf::from(DEFAULT_CONFIG))),
        None => Ok(("(embedded defaults)".to_string(), CollectorConfig::default())),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Fault injection for the crash tests; does nothing unless built with `failpoints`.
    let _failpoints = fail::FailScenario::setup();
    if let Command::Sla { contract, outages, maintenance, month, output } = &cli.command {
        return sla(contract, outages, maintenance.as_deref(), month, *output);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (source, config) = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Sla { .. } => Ok(()),
        Command::CheckConfig => {
            println!("{source}: OK");
            Ok(())
        }
        Command::Serve => match raise_nofile().and(tokio::runtime::Runtime::new()) {
            Ok(rt) => rt.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    pikett_support::wait_for_signal().await;
                    tracing::info!("shutting down");
                    let _ = tx.send(true);
                });
                tracing::info!(config = %source, "starting");
                pikett_collector::server::serve(config, rx).await
            }),
            Err(e) => Err(anyhow::anyhow!("cannot start the runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pikett-collector: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One connection per agent: lift the soft descriptor limit to the hard one.
fn raise_nofile() -> std::io::Result<()> {
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    Ok(())
}
