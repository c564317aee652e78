//! The command line of `pikett`: every subcommand, flag and argument with its help text.
//!
//! An API boundary: every argument says what it takes (times, durations, ids and where to
//! find them), and required flags show in the usage line. `tests::every_argument_has_help`
//! walks the whole tree.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client;

/// The time formats [`client::parse_time`] accepts.
macro_rules! time_formats {
    () => {
        "RFC 3339 with a zone (2026-11-24T01:00:00Z, 2026-11-24T02:00:00+01:00), a local time in the \
         system time zone (2026-11-24T02:00, or \"2026-11-24 02:00\" quoted), or `now`"
    };
}

/// The duration format (humantime, as in the configuration files).
macro_rules! duration_formats {
    () => {
        "a number and a unit: 90s, 90m, 2h, 7d, \"1h 30m\""
    };
}

const ABOUT: &str = "pikett staff CLI";

const LONG_ABOUT: &str = "pikett staff CLI: a client of the pikett collector's gRPC API.

Who you act as: every call sends your local user name (USER, else LOGNAME; \"unknown\" when \
neither is set) in the x-pikett-user header, and a staff token when one is set (PIKETT_TOKEN, \
else ~/.config/pikett/token, which must be mode 600).
- With staff tokens configured at the collector, the token's user and role act and the header \
is ignored; a call without a token is refused.
- Without tokens, the collector accepts calls from loopback only and records you as a local \
admin named USER@local (unknown@local when the header is missing or is not 1 to 64 printable \
ASCII characters).
The acting user is recorded with every change (acknowledged by, silenced by, ...) and in the \
audit log (`pikett audit`). `pikett status` shows who the collector takes you for.

Output: tables for people; --output json prints JSON lines (one object per line) for scripts.
Exit codes: 0 success, 1 refused or failed (one line on stderr says why), 2 usage error.";

#[derive(Parser)]
#[command(name = "pikett", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// The collector's gRPC address, e.g. https://pikett.example.net:9740 (https:// checks
    /// its certificate).
    #[arg(long, global = true, env = "PIKETT_COLLECTOR", default_value = "http://127.0.0.1:9740", value_name = "URL")]
    pub collector: String,
    /// PEM file of the CA that signed the collector's certificate (for https://; `ca.pem`
    /// from `pikett-collector ca init`).
    #[arg(long, global = true, env = "PIKETT_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Output format: `table` for people, `json` for JSON lines (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Tables for people.
    Table,
    /// JSON lines for scripts.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// One screen: hosts up/down, open faults by severity, who is on call, who you are.
    Status,
    /// Every known host with its status, last contact and agent version.
    Hosts {
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", help = concat!(
            "Only hosts silent for longer than this: candidates for `pikett host remove`. Duration: ",
            duration_formats!()
        ))]
        stale: Option<Duration>,
    },
    /// Open faults (all, resolved included, with --all), each with why it opened.
    Faults {
        /// Include resolved faults.
        #[arg(long)]
        all: bool,
        /// Only faults of this host (host id as `pikett hosts` lists it).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Only faults of this customer (as `pikett hosts` lists it).
        #[arg(long, value_name = "CUSTOMER")]
        customer: Option<String>,
    },
    /// One fault with its timeline: `pikett fault show ID`.
    Fault {
        #[command(subcommand)]
        command: FaultCommand,
    },
    /// Acknowledge a fault: stops its escalation.
    Ack {
        /// The fault id: the first column of `pikett faults`.
        id: u64,
        /// Free text, recorded in the fault's timeline.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Resolve a fault by hand (it reopens if the check still fails).
    Resolve {
        /// The fault id: the first column of `pikett faults`.
        id: u64,
        /// Free text, recorded in the fault's timeline.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Silence paging for a host (or one of its checks) for a while; `silence list`, `silence remove ID`.
    ///
    /// Faults are still recorded while silenced. `pikett silence list` shows the silences in
    /// force, `pikett silence remove ID` ends one early.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Silence(SilenceArgs),
    /// Maintenance windows: `add` (announced now; paging suppressed inside), `list`, `remove`.
    Maintenance {
        #[command(subcommand)]
        command: MaintenanceCommand,
    },
    /// Who holds primary/secondary/management (now or --at T); `pikett oncall override ...`.
    Oncall {
        #[arg(long, value_parser = client::parse_time, value_name = "TIME", help = concat!(
            "Who is on call at this time instead of now. Time: ", time_formats!()
        ))]
        at: Option<jiff::Timestamp>,
        #[command(subcommand)]
        command: Option<OncallCommand>,
    },
    /// Patch compliance per host: compliant, due or overdue; reboot required.
    ///
    /// The rule: a pending update is available from its release time or from when the
    /// collector first saw it pending, whichever is earlier. It is due when it was available
    /// before the last patch day began, and overdue when it was available before a patch day
    /// that began 7 or more days ago (the grace week is over; it stays overdue after the next
    /// patch day). The patch day is [patches] patch_day in the collector's config (default
    /// "2nd tue": the second Tuesday of each month) in [patches] timezone, else the
    /// customer's SLA contract time zone, else UTC; the table's LAST PATCH DAY column shows
    /// it. A host is overdue if any update is, else due if any is, else compliant. A
    /// Critical security update pending longer than [patches] critical_patch_days (default
    /// 3 days) is marked `!` and raises the warning fault patches/critical-overdue: install
    /// it out of cycle.
    Patches {
        /// Only this host (host id as `pikett hosts` lists it).
        #[arg(long, value_name = "HOST")]
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
        /// Include closed incidents.
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
        /// The host id the agent will enroll as: 1 to 253 letters, digits, '.', '_' or '-',
        /// starting with a letter or digit (e.g. web01.acme.example).
        host: String,
        /// The customer the host belongs to (its name in the collector's [customers.NAME]).
        #[arg(long, value_name = "CUSTOMER")]
        customer: String,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, value_name = "DURATION",
            help = concat!("How long the ticket stays valid. Duration: ", duration_formats!()))]
        valid: Duration,
    },
    /// One host: `pikett host revoke HOST`, `pikett host remove HOST` (role admin).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// The audit log: every change and every refused call (role admin).
    Audit {
        #[arg(long, value_parser = client::parse_time, value_name = "TIME", help = concat!(
            "Only entries from this time on. Time: ", time_formats!()
        ))]
        since: Option<jiff::Timestamp>,
        /// Only entries of this user, as recorded (the token's user, or USER@local without
        /// tokens).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Re-read the collector's configuration file and apply it, as SIGHUP does (role admin).
    ///
    /// Prints what was applied and the keys that changed but take effect only at the next
    /// restart. An invalid file is refused (exit 1) with each error's file:line:column, and
    /// the configuration in force stays.
    Reload,
    /// Customer status pages: `create CUSTOMER` (role admin), `list`, `revoke ID`.
    ///
    /// A status page is a read-only web page on the collector's HTTP port showing one
    /// customer's hosts, open incidents with their updates and ETA, this month's availability
    /// and planned maintenance. Its address holds a secret: whoever has it can read the page.
    StatusPage {
        #[command(subcommand)]
        command: StatusPageCommand,
    },
}

#[derive(Subcommand)]
pub enum StatusPageCommand {
    /// Make a link for a customer (role admin); prints its path `/status/SECRET` once.
    Create {
        /// The customer: its name in the collector's [customers.NAME], or as the CUSTOMER
        /// column of `pikett hosts` shows it. Unknown customers are refused unless --force.
        customer: String,
        /// Make the link for a customer the collector does not know yet.
        #[arg(long)]
        force: bool,
    },
    /// Every link: id, customer, created, by whom (never the secret).
    List,
    /// Revoke a link (role engineer): its address answers 404 from now on.
    Revoke {
        /// The link's id: the first column of `pikett status-page list`.
        id: u64,
    },
}

/// `pikett silence --host H [--check C] --for DURATION --reason TEXT [--force]`, or a
/// subcommand (`list`, `remove ID`).
#[derive(Args)]
pub struct SilenceArgs {
    #[command(subcommand)]
    pub command: Option<SilenceCommand>,
    /// The host to silence: its host id as `pikett hosts` lists it. A host the collector
    /// does not know is refused unless --force.
    #[arg(long, required = true, value_name = "HOST")]
    pub host: Option<String>,
    /// Only this check of the host (default: all its checks), named as the host reports it
    /// (`pikett faults --host HOST`), e.g. command/ctl or host/disk:/var. A check the host has
    /// never reported is refused unless --force.
    #[arg(long, value_name = "CHECK")]
    pub check: Option<String>,
    #[arg(long = "for", required = true, value_parser = humantime::parse_duration, value_name = "DURATION",
        help = concat!("How long, from now. Duration: ", duration_formats!()))]
    pub duration: Option<Duration>,
    /// Why: free text, shown in `pikett silence list` and recorded in the audit log.
    #[arg(long, required = true, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Silence a host that does not report yet (e.g. before its enrollment) or a check it
    /// has not reported yet.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand)]
pub enum SilenceCommand {
    /// The silences in force, oldest first.
    List,
    /// End a silence now (role engineer): its faults page again from their next change.
    Remove {
        /// The silence id: the first column of `pikett silence list`.
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Refuse the host's certificates at once; a new ticket enrolls it again.
    Revoke {
        /// The host id as `pikett hosts` lists it.
        host: String,
    },
    /// Decommission: its open faults end as "decommissioned", it leaves the host list and
    /// is no longer expected to report; its history stays for reports (role admin).
    Remove {
        /// The host id as `pikett hosts` lists it.
        host: String,
    },
}

#[derive(Subcommand)]
pub enum SlaCommand {
    /// Availability per host and window of a customer for a month (or each month of a year).
    Report {
        /// The customer (as `pikett hosts` lists it; its contract is [customers.NAME] sla).
        #[arg(long, value_name = "CUSTOMER")]
        customer: String,
        /// The calendar month in the contract's time zone: YYYY-MM, e.g. 2026-03.
        #[arg(long, required_unless_present = "year", conflicts_with = "year", value_name = "YYYY-MM")]
        month: Option<String>,
        /// The year view, YYYY (e.g. 2026): each month's availability per window.
        #[arg(long, value_name = "YYYY")]
        year: Option<i32>,
        /// table | json | csv (default: json with --output json, else table).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Classify the cause of the outages derived from a fault.
    Classify {
        /// The fault id: the first column of `pikett faults --all`.
        #[arg(long, value_name = "ID")]
        fault: u64,
        /// force-majeure | customer | none (removes the classification).
        #[arg(long, value_parser = ["force-majeure", "customer", "none"])]
        cause: String,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Table,
    /// JSON lines, one per host, window and month.
    Json,
    /// CSV with a header line.
    Csv,
}

#[derive(Subcommand)]
pub enum IncidentCommand {
    /// The incident with its status updates and timeline.
    Show {
        /// The incident id: the first column of `pikett incidents`.
        id: u64,
    },
    /// A status update (with an ETA), sent to the affected customer's contacts.
    Update {
        /// The incident id: the first column of `pikett incidents`.
        id: u64,
        /// The update's text, as the customer's contacts receive it.
        #[arg(long, value_name = "TEXT")]
        text: String,
        #[arg(long, value_parser = client::parse_time, value_name = "TIME", help = concat!(
            "When you expect it fixed. Time: ", time_formats!()
        ))]
        eta: Option<jiff::Timestamp>,
    },
    /// Make it an emergency: tagged [Notfall], pages the whole escalation chain at once.
    Escalate {
        /// The incident id: the first column of `pikett incidents`.
        id: u64,
    },
    /// Close it; a root cause and recommendations are required. An incident that closed by
    /// itself (every fault resolved) takes them afterwards the same way.
    Close {
        /// The incident id: the first column of `pikett incidents --all`.
        id: u64,
        /// What caused it: free text for the report (required by the collector).
        #[arg(long, value_name = "TEXT")]
        root_cause: Option<String>,
        /// What should change so it does not happen again: free text for the report
        /// (required by the collector).
        #[arg(long, value_name = "TEXT")]
        recommendations: Option<String>,
    },
    /// The post-incident report (Markdown).
    Report {
        /// The incident id: the first column of `pikett incidents --all`.
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum FaultCommand {
    /// The fault with its timeline.
    Show {
        /// The fault id: the first column of `pikett faults` (`--all` for resolved ones).
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum MaintenanceCommand {
    /// Announce a maintenance window now.
    Add {
        /// The host: its host id as `pikett hosts` lists it. A host the collector does not
        /// know is refused unless --force.
        #[arg(long, value_name = "HOST")]
        host: String,
        #[arg(long, value_parser = client::parse_time, value_name = "TIME", help = concat!(
            "When the window starts. Time: ", time_formats!()
        ))]
        start: jiff::Timestamp,
        #[arg(long, value_parser = client::parse_time, value_name = "TIME", help = concat!(
            "When it ends (exclusive; after --start). Time: ", time_formats!()
        ))]
        end: jiff::Timestamp,
        /// Why: free text, shown in `pikett maintenance list` and in SLA reports' excuses.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Announce it for a host that does not report yet (e.g. before its enrollment).
        #[arg(long)]
        force: bool,
    },
    /// Every maintenance window with when it was announced and by whom.
    List,
    /// Delete a maintenance window (a mistaken announcement, or work finished early; role
    /// engineer). Its faults page again from their next change.
    Remove {
        /// The maintenance window id: the first column of `pikett maintenance list`.
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum OncallCommand {
    /// Put someone on call for a role for a time.
    Override {
        /// The role to hand over.
        #[arg(long, value_parser = ["primary", "secondary", "management"])]
        role: String,
        /// Who takes it: a person of the collector's config ([people.NAME]).
        #[arg(long, value_name = "PERSON")]
        person: String,
        #[arg(long, value_parser = client::parse_time, value_name = "TIME", help = concat!(
            "From when. Time: ", time_formats!()
        ))]
        from: jiff::Timestamp,
        #[arg(long, value_parser = client::parse_time, value_name = "TIME", help = concat!(
            "Until when (exclusive). Time: ", time_formats!()
        ))]
        to: jiff::Timestamp,
    },
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// Every argument of `cmd` and its subcommands, with the path of subcommands to it.
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.to_string(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    fn all_args() -> Vec<(String, clap::Arg)> {
        let mut cmd = Cli::command();
        cmd.build();
        let mut out = Vec::new();
        walk(&cmd, "pikett", &mut out);
        out
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_has_help() {
        let args = all_args();
        assert!(args.len() > 60, "the walk found only {} arguments", args.len());
        let missing: Vec<String> = args
            .iter()
            .filter(|(_, a)| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|(path, a)| format!("{path}: {}", a.get_id()))
            .collect();
        assert!(missing.is_empty(), "arguments without help:\n{}", missing.join("\n"));
    }

    #[test]
    fn every_subcommand_has_an_about() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
                    missing.push(path.clone());
                }
                check(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "pikett", &mut missing);
        assert!(missing.is_empty(), "subcommands without help: {missing:?}");
    }

    #[test]
    fn time_and_duration_arguments_state_their_format() {
        for (path, arg) in all_args() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let name = arg.get_value_names().map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            match name.as_deref() {
                Some([n]) if n == "TIME" => {
                    assert!(help.contains("RFC 3339") && help.contains("now"), "{path} --{}: {help}", arg.get_id())
                }
                Some([n]) if n == "DURATION" => {
                    assert!(help.contains("90m") && help.contains("7d"), "{path} --{}: {help}", arg.get_id())
                }
                _ => {}
            }
            if arg.get_id() == "id" {
                assert!(help.contains("`pikett "), "{path} ID does not say where ids are: {help}");
            }
        }
    }

    fn usage(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        cmd.build();
        let mut sub = &mut cmd;
        for p in path {
            sub = sub.find_subcommand_mut(p).unwrap_or_else(|| panic!("no subcommand {p}"));
        }
        sub.render_usage().to_string()
    }

    #[test]
    fn required_flags_show_in_the_usage_line() {
        let silence = usage(&["silence"]);
        for flag in ["--host <HOST>", "--for <DURATION>", "--reason <TEXT>", "silence <COMMAND>"] {
            assert!(silence.contains(flag), "{flag} missing from: {silence}");
        }
        let add = usage(&["maintenance", "add"]);
        for flag in ["--host <HOST>", "--start <TIME>", "--end <TIME>", "--reason <TEXT>"] {
            assert!(add.contains(flag), "{flag} missing from: {add}");
        }
        let ticket = usage(&["ticket"]);
        assert!(ticket.contains("--customer <CUSTOMER>") && ticket.contains("<HOST>"), "{ticket}");
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pikett").chain(args.iter().copied()))
    }

    #[test]
    fn silence_keeps_its_flag_form_and_has_list_and_remove() {
        let Command::Silence(s) = parse(&["silence", "--host", "h", "--for", "2h", "--reason", "r"]).unwrap().command
        else {
            panic!("not silence")
        };
        assert!(s.command.is_none() && !s.force);
        assert_eq!((s.host.as_deref(), s.duration), (Some("h"), Some(Duration::from_secs(7200))));
        let Command::Silence(s) =
            parse(&["silence", "--host", "h", "--check", "c", "--for", "1h 30m", "--reason", "r", "--force"])
                .unwrap()
                .command
        else {
            panic!("not silence")
        };
        assert!(s.force && s.check.as_deref() == Some("c"));
        assert!(matches!(
            parse(&["silence", "list"]).unwrap().command,
            Command::Silence(SilenceArgs { command: Some(SilenceCommand::List), .. })
        ));
        assert!(matches!(
            parse(&["silence", "remove", "4", "--output", "json"]).unwrap().command,
            Command::Silence(SilenceArgs { command: Some(SilenceCommand::Remove { id: 4 }), .. })
        ));
        // Half an add, or an add mixed with a subcommand, is a usage error.
        for bad in [
            &["silence"][..],
            &["silence", "--host", "h", "--for", "2h"],
            &["silence", "--host", "h", "list"],
            &["silence", "remove"],
            &["silence", "--host", "h", "--for", "soon", "--reason", "r"],
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn maintenance_keeps_add_and_list_and_has_remove() {
        let add = ["maintenance", "add", "--host", "h", "--start", "now", "--end", "2030-01-01T00:00:00Z"];
        let cli = parse(&[&add[..], &["--reason", "r"]].concat()).unwrap();
        assert!(matches!(cli.command, Command::Maintenance { command: MaintenanceCommand::Add { force: false, .. } }));
        let cli = parse(&[&add[..], &["--reason", "r", "--force"]].concat()).unwrap();
        assert!(matches!(cli.command, Command::Maintenance { command: MaintenanceCommand::Add { force: true, .. } }));
        assert!(matches!(
            parse(&["maintenance", "list"]).unwrap().command,
            Command::Maintenance { command: MaintenanceCommand::List }
        ));
        assert!(matches!(
            parse(&["maintenance", "remove", "2"]).unwrap().command,
            Command::Maintenance { command: MaintenanceCommand::Remove { id: 2 } }
        ));
        assert!(matches!(parse(&["reload"]).unwrap().command, Command::Reload));
    }

    #[test]
    fn status_page_has_create_list_and_revoke() {
        assert!(matches!(
            parse(&["status-page", "create", "acme"]).unwrap().command,
            Command::StatusPage { command: StatusPageCommand::Create { ref customer, force: false } } if customer == "acme"
        ));
        assert!(matches!(
            parse(&["status-page", "create", "acme", "--force"]).unwrap().command,
            Command::StatusPage { command: StatusPageCommand::Create { force: true, .. } }
        ));
        assert!(matches!(
            parse(&["status-page", "list", "--output", "json"]).unwrap().command,
            Command::StatusPage { command: StatusPageCommand::List }
        ));
        assert!(matches!(
            parse(&["status-page", "revoke", "3"]).unwrap().command,
            Command::StatusPage { command: StatusPageCommand::Revoke { id: 3 } }
        ));
        for bad in [&["status-page", "create"][..], &["status-page", "revoke", "x"], &["status-page"]] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_long_help_names_the_acting_user() {
        let help = Cli::command().render_long_help().to_string();
        for needle in ["x-pikett-user", "USER", "LOGNAME", "@local", "PIKETT_TOKEN", "pikett audit"] {
            assert!(help.contains(needle), "`pikett --help` does not mention {needle}:\n{help}");
        }
    }
}
