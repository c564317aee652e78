//! `pikett`, the staff CLI: a client of the collector's gRPC API (`Admin`, `Reports`,
//! `Incidents`); it links no collector service or storage. The command line is defined in
//! [`args`]; this file parses it, runs the command and maps errors to exit codes.
//! Tables for people, `--output json` (JSON lines) for scripts.
//! Exit codes: 0 success, 1 refused or failed, 2 usage error.

use std::process::ExitCode;

mod admin;
mod args;
mod client;
mod incidents;
mod reports;
mod status_page;

use args::{
    Cli, Command, FaultCommand, Format, HostCommand, IncidentCommand, MaintenanceCommand, OncallCommand, Output,
    SilenceArgs, SilenceCommand, SlaCommand, StatusPageCommand,
};
use clap::Parser;

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
        let text = match run(&mut client, args.command, json).await {
            // A collector of a cluster that is not the leader names the leader: ask there,
            // once. Safe to repeat: a follower refuses a staff call before doing anything.
            Err(e) => match client::leader_redirect(&args.collector, &e) {
                Some(leader) => {
                    let mut client = client::Client::connect(&leader, args.ca_file.as_deref()).await?;
                    run(&mut client, Cli::parse().command, json).await?
                }
                None => return Err(e),
            },
            Ok(text) => text,
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

/// Runs one command; returns what to print.
async fn run(client: &mut client::Client, command: Command, json: bool) -> anyhow::Result<String> {
    Ok(match command {
        Command::Status => admin::status(client, json).await?,
        Command::Hosts { stale } => admin::hosts(client, stale, json).await?,
        Command::Faults { all, host, customer } => admin::faults(client, all, host, customer, json).await?,
        Command::Fault { command: FaultCommand::Show { id } } => admin::fault_show(client, id, json).await?,
        Command::Ack { id, note } => admin::ack(client, id, note, json).await?,
        Command::Resolve { id, note } => admin::resolve(client, id, note, json).await?,
        Command::Silence(SilenceArgs { command: Some(SilenceCommand::List), .. }) => {
            admin::silence_list(client, json).await?
        }
        Command::Silence(SilenceArgs { command: Some(SilenceCommand::Remove { id }), .. }) => {
            admin::silence_remove(client, id, json).await?
        }
        Command::Silence(SilenceArgs { command: None, host, check, duration, reason, force }) => {
            // clap requires these without a subcommand.
            let (Some(host), Some(duration), Some(reason)) = (host, duration, reason) else {
                anyhow::bail!("silence needs --host, --for and --reason (or `silence list` / `silence remove ID`)");
            };
            admin::silence(client, admin::NewSilence { host, check, duration, reason, force }, json).await?
        }
        Command::Maintenance { command: MaintenanceCommand::Add { host, start, end, reason, force } } => {
            admin::maintenance_add(client, admin::NewMaintenance { host, start, end, reason, force }, json).await?
        }
        Command::Maintenance { command: MaintenanceCommand::List } => admin::maintenance_list(client, json).await?,
        Command::Maintenance { command: MaintenanceCommand::Remove { id } } => {
            admin::maintenance_remove(client, id, json).await?
        }
        Command::Oncall { at, command: None } => admin::oncall(client, at, json).await?,
        Command::Oncall { command: Some(OncallCommand::Override { role, person, from, to }), .. } => {
            admin::oncall_override(client, role, person, from, to, json).await?
        }
        Command::Patches { host, overdue } => reports::patches(client, host, overdue, json).await?,
        Command::Sla { command: SlaCommand::Report { customer, month, year, format } } => {
            let format = match format {
                Some(Format::Table) => reports::ReportFormat::Table,
                Some(Format::Json) => reports::ReportFormat::Json,
                Some(Format::Csv) => reports::ReportFormat::Csv,
                None if json => reports::ReportFormat::Json,
                None => reports::ReportFormat::Table,
            };
            reports::sla_report(client, customer, month, year, format).await?
        }
        Command::Sla { command: SlaCommand::Classify { fault, cause } } => {
            reports::sla_classify(client, fault, cause, json).await?
        }
        Command::Incidents { all } => incidents::list(client, all, json).await?,
        Command::Incident { command } => match command {
            IncidentCommand::Show { id } => incidents::show(client, id, json).await?,
            IncidentCommand::Update { id, text, eta } => incidents::update(client, id, text, eta, json).await?,
            IncidentCommand::Escalate { id } => incidents::escalate(client, id, json).await?,
            IncidentCommand::Close { id, root_cause, recommendations } => {
                incidents::close(client, id, root_cause, recommendations, json).await?
            }
            IncidentCommand::Report { id } => incidents::report(client, id, json).await?,
        },
        Command::Ticket { host, customer, valid } => admin::ticket(client, host, customer, valid, json).await?,
        Command::Host { command: HostCommand::Revoke { host } } => admin::revoke(client, host, json).await?,
        Command::Host { command: HostCommand::Remove { host } } => admin::remove(client, host, json).await?,
        Command::Audit { since, user } => admin::audit(client, since, user, json).await?,
        Command::Reload => admin::reload(client, json).await?,
        Command::StatusPage { command } => match command {
            StatusPageCommand::Create { customer, force } => status_page::create(client, customer, force, json).await?,
            StatusPageCommand::List => status_page::list(client, json).await?,
            StatusPageCommand::Revoke { id } => status_page::revoke(client, id, json).await?,
        },
    })
}
