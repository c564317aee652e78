//! `pikett`, the staff CLI: a client of the collector's gRPC API (`Admin`, `Reports`,
//! `Incidents`); it links no collector service or storage. This file only parses arguments.
//! Tables for people, `--output json` (JSON lines) for scripts.
//! Exit codes: 0 success, 1 refused or failed, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

mod admin;
mod client;
mod incidents;
mod reports;

use clap::{Parser, Subcommand, ValueEnum};

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
    Hosts {
        /// Only hosts silent for longer than this (e.g. 7d): candidates for `host remove`.
        #[arg(long, value_parser = humantime::parse_duration)]
        stale: Option<std::time::Duration>,
    },
    /// Open faults (all with --all).
    Faults {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        customer: Option<String>,
    },
    /// One fault with its timeline: `pikett fault show ID`.
    Fault {
        #[command(subcommand)]
        command: FaultCommand,
    },
    /// Acknowledge a fault: stops its escalation.
    Ack {
        id: u64,
        #[arg(long)]
        note: Option<String>,
    },
    /// Resolve a fault by hand (it reopens if the check still fails).
    Resolve {
        id: u64,
        #[arg(long)]
        note: Option<String>,
    },
    /// Silence paging for a host (or one of its checks) for a while; faults are still recorded.
    Silence {
        #[arg(long)]
        host: String,
        #[arg(long)]
        check: Option<String>,
        /// How long, e.g. 2h.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long)]
        reason: String,
    },
    /// Maintenance windows (announced now): paging suppressed inside them.
    Maintenance {
        #[command(subcommand)]
        command: MaintenanceCommand,
    },
    /// Who holds primary/secondary/management (now or --at T); `pikett oncall override ...`.
    Oncall {
        #[arg(long, value_parser = client::parse_time)]
        at: Option<jiff::Timestamp>,
        #[command(subcommand)]
        command: Option<OncallCommand>,
    },
    /// Patch compliance per host: compliant, due or overdue; reboot required.
    Patches {
        #[arg(long)]
        host: Option<String>,
        /// Only overdue hosts.
        #[arg(long)]
        overdue: bool,
    },
    /// SLA reports (`pikett sla report ...`) and outage classification (`pikett sla classify ...`).
    Sla {
        #[command(subcommand)]
        command: SlaCommand,
    },
    /// Incidents not closed (all with --all).
    Incidents {
        #[arg(long)]
        all: bool,
    },
    /// One incident: show, update, escalate (emergency), close, report.
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// A one-time enrollment ticket for HOST (role admin); the agent's `enroll` uses it.
    Ticket {
        host: String,
        #[arg(long)]
        customer: String,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        valid: std::time::Duration,
    },
    /// One host: `pikett host revoke HOST` refuses its certificates from now on (role admin).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// The audit log: every change and every refused call (role admin).
    Audit {
        #[arg(long, value_parser = client::parse_time)]
        since: Option<jiff::Timestamp>,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Refuse the host's certificates at once; a new ticket enrolls it again.
    Revoke { host: String },
    /// Decommission: its open faults end as "decommissioned", it leaves the host list and
    /// is no longer expected to report; its history stays for reports (role admin).
    Remove { host: String },
}

#[derive(Subcommand)]
enum SlaCommand {
    /// Availability per host and window of a customer for a month (or each month of a year).
    Report {
        #[arg(long)]
        customer: String,
        /// The calendar month in the contract's time zone, YYYY-MM.
        #[arg(long, required_unless_present = "year", conflicts_with = "year")]
        month: Option<String>,
        /// The year view: each month's availability per window.
        #[arg(long)]
        year: Option<i32>,
        /// table | json | csv (default: --output's).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Classify the cause of the outages derived from a fault.
    Classify {
        #[arg(long)]
        fault: u64,
        /// force-majeure | customer | none (removes the classification).
        #[arg(long, value_parser = ["force-majeure", "customer", "none"])]
        cause: String,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum IncidentCommand {
    /// The incident with its status updates and timeline.
    Show { id: u64 },
    /// A status update (with an ETA), sent to the affected customer's contacts.
    Update {
        id: u64,
        #[arg(long)]
        text: String,
        #[arg(long, value_parser = client::parse_time)]
        eta: Option<jiff::Timestamp>,
    },
    /// Make it an emergency: tagged [Notfall], pages the whole escalation chain at once.
    Escalate { id: u64 },
    /// Close it; a root cause and recommendations are required. An incident that closed by
    /// itself (every fault resolved) takes them afterwards the same way.
    Close {
        id: u64,
        #[arg(long)]
        root_cause: Option<String>,
        #[arg(long)]
        recommendations: Option<String>,
    },
    /// The post-incident report (Markdown).
    Report { id: u64 },
}

#[derive(Subcommand)]
enum FaultCommand {
    /// The fault with its timeline.
    Show { id: u64 },
}

#[derive(Subcommand)]
enum MaintenanceCommand {
    /// Announce a maintenance window now.
    Add {
        #[arg(long)]
        host: String,
        #[arg(long, value_parser = client::parse_time)]
        start: jiff::Timestamp,
        #[arg(long, value_parser = client::parse_time)]
        end: jiff::Timestamp,
        #[arg(long)]
        reason: String,
    },
    /// Every maintenance window with when it was announced.
    List,
}

#[derive(Subcommand)]
enum OncallCommand {
    /// Put someone on call for a role for a time.
    Override {
        #[arg(long)]
        role: String,
        #[arg(long)]
        person: String,
        #[arg(long, value_parser = client::parse_time)]
        from: jiff::Timestamp,
        #[arg(long, value_parser = client::parse_time)]
        to: jiff::Timestamp,
    },
}

fn main() -> ExitCode {
    if let Some(code) = pikett_support::generate::from_args::<Cli>() {
        return code;
    }
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
        let mut client = client::Client::connect(&args.collector, args.ca_file.as_deref()).await?;
        let text = match args.command {
            Command::Status => admin::status(&mut client, json).await?,
            Command::Hosts { stale } => admin::hosts(&mut client, stale, json).await?,
            Command::Faults { all, host, customer } => admin::faults(&mut client, all, host, customer, json).await?,
            Command::Fault { command: FaultCommand::Show { id } } => admin::fault_show(&mut client, id, json).await?,
            Command::Ack { id, note } => admin::ack(&mut client, id, note, json).await?,
            Command::Resolve { id, note } => admin::resolve(&mut client, id, note, json).await?,
            Command::Silence { host, check, duration, reason } => {
                admin::silence(&mut client, host, check, duration, reason, json).await?
            }
            Command::Maintenance { command: MaintenanceCommand::Add { host, start, end, reason } } => {
                admin::maintenance_add(&mut client, host, start, end, reason, json).await?
            }
            Command::Maintenance { command: MaintenanceCommand::List } => {
                admin::maintenance_list(&mut client, json).await?
            }
            Command::Oncall { at, command: None } => admin::oncall(&mut client, at, json).await?,
            Command::Oncall { command: Some(OncallCommand::Override { role, person, from, to }), .. } => {
                admin::oncall_override(&mut client, role, person, from, to, json).await?
            }
            Command::Patches { host, overdue } => reports::patches(&mut client, host, overdue, json).await?,
            Command::Sla { command: SlaCommand::Report { customer, month, year, format } } => {
                let format = match format {
                    Some(Format::Table) => reports::ReportFormat::Table,
                    Some(Format::Json) => reports::ReportFormat::Json,
                    Some(Format::Csv) => reports::ReportFormat::Csv,
                    None if json => reports::ReportFormat::Json,
                    None => reports::ReportFormat::Table,
                };
                reports::sla_report(&mut client, customer, month, year, format).await?
            }
            Command::Sla { command: SlaCommand::Classify { fault, cause } } => {
                reports::sla_classify(&mut client, fault, cause, json).await?
            }
            Command::Incidents { all } => incidents::list(&mut client, all, json).await?,
            Command::Incident { command } => match command {
                IncidentCommand::Show { id } => incidents::show(&mut client, id, json).await?,
                IncidentCommand::Update { id, text, eta } => {
                    incidents::update(&mut client, id, text, eta, json).await?
                }
                IncidentCommand::Escalate { id } => incidents::escalate(&mut client, id, json).await?,
                IncidentCommand::Close { id, root_cause, recommendations } => {
                    incidents::close(&mut client, id, root_cause, recommendations, json).await?
                }
                IncidentCommand::Report { id } => incidents::report(&mut client, id, json).await?,
            },
            Command::Ticket { host, customer, valid } => {
                admin::ticket(&mut client, host, customer, valid, json).await?
            }
            Command::Host { command: HostCommand::Revoke { host } } => admin::revoke(&mut client, host, json).await?,
            Command::Host { command: HostCommand::Remove { host } } => admin::remove(&mut client, host, json).await?,
            Command::Audit { since, user } => admin::audit(&mut client, since, user, json).await?,
        };
        print!("{text}");
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pikett: {}", pikett_support::error_chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
