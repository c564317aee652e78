//! The `pikett-collector` command line: parse, build, run, map errors to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pikett_collector::config::CollectorConfig;

const DEFAULT_CONFIG: &str = "/etc/pikett/collector.toml";

/// Ingest allocates and frees per sample (decoded labels); mimalloc's thread-local free lists
/// make that a fraction of glibc's (and musl's) cost. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pikett-collector", version, about = "pikett's central collector")]
struct Cli {
    /// The configuration file. Without it, and with no file at the default
    /// path, embedded defaults apply (loopback, sled under data_dir).
    #[arg(long, global = true, env = "PIKETT_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines on stderr: `text` (colours only on a terminal) or `json` (one object per line).
    #[arg(long, global = true, default_value = "text", env = "PIKETT_LOG_FORMAT")]
    log_format: pikett_support::service::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The service: gRPC on `listen`, HTTP (/metrics, /healthz, /readyz) on `http_listen`.
    Serve,
    /// Validate the configuration: exit 0, or print each error and exit 2.
    CheckConfig,
    /// The collector's CA for agent certificates (enrollment, see docs/operations.md).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Print a one-time enrollment ticket for HOST (needs `[tls] ca_key_file`).
    Ticket {
        host: String,
        /// The customer the host belongs to: decided here, never by the agent.
        #[arg(long)]
        customer: String,
        /// How long the ticket may be used.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        valid: std::time::Duration,
    },
    /// Staff tokens (`staff_tokens_file`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// SLA availability of one month from files, offline (no running collector needed).
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

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA and the collector's server certificate (keys mode 0600) and print
    /// the `[tls]` section that uses them.
    Init {
        /// Where to write ca.pem, ca.key, collector.pem, collector.key
        /// (default: `<data_dir>/pki`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A DNS name or IP address agents use to reach the collector (repeatable;
        /// default: this machine's host name, localhost and 127.0.0.1).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// A new token for USER with ROLE, printed once (as the last word of the output).
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, value_parser = ["viewer", "engineer", "admin"])]
        role: String,
    },
    /// The tokens (never their secrets).
    List,
    /// Remove a token by its id, or every token of a user: it stops working at once.
    Revoke { id_or_user: String },
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

/// The file the configuration is read from (for reloads), if any.
fn config_path(path: Option<&PathBuf>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
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
    if let Some(code) = pikett_support::generate::from_args::<Cli>() {
        return code;
    }
    let cli = Cli::parse();
    // Fault injection for the crash tests; does nothing unless built with `failpoints`.
    let _failpoints = fail::FailScenario::setup();
    if let Command::Sla { contract, outages, maintenance, month, output } = &cli.command {
        return sla(contract, outages, maintenance.as_deref(), month, *output);
    }
    pikett_support::service::init_logging(cli.log_format);
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
        Command::Ca { command: CaCommand::Init { dir, names } } => ca_init(&config, dir, names),
        Command::Ticket { host, customer, valid } => ticket(&config, &host, &customer, valid),
        Command::Token { command } => token(&config, command),
        Command::CheckConfig => {
            // Built as `serve` builds them: gateway URLs, body templates, secret files.
            if let Err(e) = config.channels.build() {
                eprintln!("{source}: {e}");
                return ExitCode::from(2);
            }
            println!("{source}: OK");
            Ok(())
        }
        Command::Serve => match raise_nofile().and(tokio::runtime::Runtime::new()) {
            Ok(rt) => rt.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    pikett_support::wait_for_signal().await;
                    tracing::info!("shutting down");
                    pikett_support::service::notify_stopping();
                    let _ = tx.send(true);
                });
                tracing::info!(config = %source, "starting");
                pikett_collector::server::serve_from(config, config_path(cli.config.as_ref()), rx).await
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

fn ca_init(config: &CollectorConfig, dir: Option<PathBuf>, mut names: Vec<String>) -> anyhow::Result<()> {
    use pikett_collector::services::pki;
    let dir = dir.unwrap_or_else(|| config.data_dir.join("pki"));
    if names.is_empty() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        names = [host, "localhost".into(), "127.0.0.1".into()].into_iter().filter(|n| !n.is_empty()).collect();
    }
    let files = pki::init(&dir, &names, jiff::Timestamp::now())?;
    let ca = pki::Ca::load(&files.ca_cert, &files.ca_key)?;
    println!("CA and server certificate for {} written to {}", names.join(", "), dir.display());
    println!("CA fingerprint (SHA-256): {}", ca.fingerprint());
    println!();
    println!("Use them in the collector's config:");
    println!("[tls]");
    println!("cert_file = \"{}\"", files.server_cert.display());
    println!("key_file = \"{}\"", files.server_key.display());
    println!("client_ca_file = \"{}\"", files.ca_cert.display());
    println!("ca_key_file = \"{}\"", files.ca_key.display());
    Ok(())
}

fn ticket(config: &CollectorConfig, host: &str, customer: &str, valid: std::time::Duration) -> anyhow::Result<()> {
    use pikett_collector::services::pki;
    pikett_core::hosts::check_host_id(host).map_err(anyhow::Error::msg)?;
    if customer.is_empty() {
        anyhow::bail!("--customer: a ticket needs a customer");
    }
    let tls = config.tls.as_ref();
    let (Some(key), Some(cert)) =
        (tls.and_then(|t| t.ca_key_file.as_ref()), tls.and_then(|t| t.client_ca_file.as_ref()))
    else {
        anyhow::bail!("tickets need the CA: set [tls] client_ca_file and ca_key_file (see `pikett-collector ca init`)");
    };
    let ca = pki::Ca::load(cert, key)?;
    let expires = jiff::Timestamp::now().as_millisecond() + valid.as_millis() as i64;
    let ticket = ca.issue_ticket(host, customer, expires);
    let until = jiff::Timestamp::from_millisecond(expires).map(|t| t.to_string()).unwrap_or_default();
    println!("Enrollment ticket for {host} (customer {customer}), one use, valid until {until}.");
    println!("On the host: pikett-agent enroll --collector https://COLLECTOR:PORT --ticket TICKET");
    println!("{ticket}");
    Ok(())
}

fn token(config: &CollectorConfig, command: TokenCommand) -> anyhow::Result<()> {
    use pikett_collector::services::staff;
    let path = config.tokens_path();
    match command {
        TokenCommand::Create { user, role } => {
            let role = staff::Role::parse(&role).ok_or_else(|| anyhow::anyhow!("--role {role:?}"))?;
            let (token, record) = staff::create(&path, &user, role, jiff::Timestamp::now().as_millisecond())?;
            println!(
                "Token {} for {} (role {}), stored hashed in {}.",
                record.id,
                record.user,
                role.as_str(),
                path.display()
            );
            println!("It is shown only now. Give it to {user} for PIKETT_TOKEN or ~/.config/pikett/token (mode 0600):");
            println!("{token}");
        }
        TokenCommand::List => {
            println!("{:<10} {:<24} {:<9} CREATED", "ID", "USER", "ROLE");
            for t in staff::list(&path)? {
                let created =
                    jiff::Timestamp::from_millisecond(t.created_ms).map(|t| t.to_string()).unwrap_or_default();
                println!("{:<10} {:<24} {:<9} {created}", t.id, t.user, t.role.as_str());
            }
        }
        TokenCommand::Revoke { id_or_user } => {
            for t in staff::revoke(&path, &id_or_user)? {
                println!("revoked token {} of {} ({})", t.id, t.user, t.role.as_str());
            }
        }
    }
    Ok(())
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
