//! Collector high availability end to end (docs/design/collector-ha.md, section 4 step 12):
//! a real PostgreSQL 15 (`store::pg::testing`, one server for this binary, a database per
//! test), three real collectors `c1`..`c3` on it (`[store] kind = "postgres"`), real agents
//! listing all three, and a local webhook receiver that records every `Idempotency-Key`
//! and which node sent it (each node's webhook channel adds the header `X-Pikett-Node`).
//!
//! One test each: the three start at the same instant and exactly one leads, `pikett status`
//! through any node shows the same cluster; kill -9 of the leader while a fault pages (a new
//! leader within 10 s, every escalation step delivered, no step under two keys); a leader
//! stopped for 2 × ttl is fenced when it wakes (exit 75, nothing new sent); kill -9 of the
//! collector an agent streams to (every batch stored once, no gap); PostgreSQL restarted
//! under load (no acknowledgement while it is down, nothing lost after, a fault opened
//! meanwhile still pages).
//!
//! Run alone: `cargo test -p pikett-tests --test ha -- --nocapture --test-threads 1`; each
//! test prints what it measured.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pikett_collector::store::pg::testing;
use pikett_tests::*;

/// The lease's ttl the collectors run with (the default, written out).
const TTL: Duration = Duration::from_secs(5);

/// Three collectors on one fresh database, each in its own directory, with the same
/// paging configuration (`extra`) except for the webhook header naming the sender.
struct Cluster {
    dir: tempfile::TempDir,
    pki: Pki,
    ca: String,
    db: String,
    rt: tokio::runtime::Runtime,
    nodes: Vec<CollectorSetup>,
    procs: Vec<Option<Proc>>,
}

impl Cluster {
    /// Writes the three configurations; `paging(node)` gives each node's extra keys and tables.
    fn new(paging: impl Fn(&str) -> String) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let ca = pki.path("ca.pem");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let db = rt.block_on(testing::fresh_database());
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let name = format!("c{i}");
            let node_dir = dir.path().join(&name);
            std::fs::create_dir_all(&node_dir).unwrap();
            let extra = format!(
                "{}\n[store]\nkind = \"postgres\"\nurl = \"{db}\"\nnode_id = \"{name}\"\nlease_ttl = \"{}s\"\n",
                paging(&name),
                TTL.as_secs()
            );
            nodes.push(CollectorSetup::new(&node_dir, &pki, &extra));
        }
        Cluster { dir, pki, ca, db, rt, nodes, procs: vec![None, None, None] }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts every node at the same instant, then waits until each answers `/readyz`.
    fn start_all(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            self.procs[i] = Some(spawn("pikett-collector", &node.config, &["serve"], &node.log));
        }
        for i in 0..3 {
            self.wait_ready(i);
        }
    }

    fn wait_ready(&self, i: usize) {
        let node = &self.nodes[i];
        let ready = wait_for(Duration::from_secs(20), || {
            http_get(node.http_port, "/readyz").filter(|(s, _)| *s == 200).map(|_| ())
        });
        assert!(ready.is_some(), "c{} did not become ready; log:\n{}", i + 1, self.log(i));
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..3).map(|i| format!("===== c{} log:\n{}\n", i + 1, tail(&self.log(i), 60))).collect()
    }

    /// The running nodes whose `/healthz/leader` answers 200.
    fn leaders(&self) -> Vec<usize> {
        self.leaders_but(None)
    }

    /// [`Self::leaders`] without asking node `not` (a stopped process would hold each
    /// request for the whole read timeout).
    fn leaders_but(&self, not: Option<usize>) -> Vec<usize> {
        (0..3)
            .filter(|&i| self.procs[i].is_some() && Some(i) != not)
            .filter(|&i| http_get(self.nodes[i].http_port, "/healthz/leader").is_some_and(|(s, _)| s == 200))
            .collect()
    }

    /// Waits until exactly one running node leads, `not` left out; returns it.
    fn wait_leader(&self, limit: Duration, not: Option<usize>) -> Option<usize> {
        wait_for(limit, || match self.leaders_but(not)[..] {
            [one] => Some(one),
            _ => None,
        })
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.sigkill();
        }
    }

    fn pid(&self, i: usize) -> i32 {
        self.procs[i].as_ref().expect("running").child.id() as i32
    }

    /// `pikett ARGS` through node `i` (the CLI follows a follower's redirect to the leader).
    fn pikett(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.nodes[i].pikett(args, &self.ca)
    }

    /// An agent config for `host` listing the collectors in `order`.
    fn agent_config(&self, host: &str, order: &[usize], extra: &str, agent_extra: &str) -> PathBuf {
        let first = self.nodes[order[0]].url();
        let cfg = agent_config(self.path(), &self.pki, host, &first, extra);
        let urls: Vec<String> = order.iter().map(|&i| format!("\"{}\"", self.nodes[i].url())).collect();
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            &format!("collectors = [\"{first}\"]"),
            &format!("collectors = [{}]\n{agent_extra}", urls.join(", ")),
        );
        assert!(text.contains(&urls.join(", ")), "{text}");
        std::fs::write(&cfg, text).unwrap();
        cfg
    }

    /// `(epoch, seq)` of every stored batch of `host`, in order.
    fn stored(&self, host: &str) -> Vec<(i64, i64)> {
        self.rt.block_on(async {
            let client = testing::admin_client(&self.db).await;
            let rows = client
                .query("SELECT epoch, seq FROM pikett_batches WHERE host = $1 ORDER BY epoch, seq", &[&host])
                .await
                .expect("reading pikett_batches");
            rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))).collect()
        })
    }

    /// One integer from a query on the test database (`None` on any error).
    fn query_i64(&self, sql: &str, host: &str) -> Option<i64> {
        self.rt.block_on(async {
            let client = testing::admin_client(&self.db).await;
            client.query_opt(sql, &[&host]).await.ok().flatten().and_then(|r| r.get::<_, Option<i64>>(0))
        })
    }

    /// The last seq of `host` the leader's evaluator committed (its cursor in the leader's
    /// tree `eval_cursor`: key host NUL epoch, value the seq as u64 big-endian).
    fn evaluated_up_to(&self, host: &str) -> Option<i64> {
        self.query_i64(
            "SELECT max(('x' || encode(value, 'hex'))::bit(64)::bigint) FROM pikett_kv \
             WHERE tree = 'eval_cursor' AND octet_length(key) = octet_length($1::text) + 9 \
             AND substring(key from 1 for octet_length($1::text)) = convert_to($1::text, 'UTF8')",
            host,
        )
    }

    /// Waits until the evaluator has committed every one of `n` stored batches of `host`, then
    /// checks on the leader that it skipped no gap and saw no batch stored late.
    fn assert_all_evaluated(&self, host: &str, n: i64) {
        let started = Instant::now();
        let done = wait_for(Duration::from_secs(20), || (self.evaluated_up_to(host) == Some(n)).then_some(()));
        assert!(
            done.is_some(),
            "{host}: the evaluator's cursor is at {:?}, not at the last stored batch {n}:\n{}",
            self.evaluated_up_to(host),
            self.logs()
        );
        let leader = self.wait_leader(Duration::from_secs(10), None).expect("a leader");
        let port = self.nodes[leader].http_port;
        let (gaps, late) = (metric(port, "pikett_eval_gaps_total"), metric(port, "pikett_batches_late_total"));
        println!(
            "ha: {host}: evaluated up to seq {n} ({:?} after the agent stopped); on leader c{}: gaps skipped {gaps:?}, late {late:?}",
            started.elapsed(),
            leader + 1
        );
        assert_eq!(gaps, Some(0.0), "the evaluator skipped a gap");
        assert_eq!(late, Some(0.0), "a batch was stored after the evaluator had skipped it");
    }

    /// The running nodes (started, not killed by the test; they may have exited on their own).
    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..3).filter(|&i| self.procs[i].is_some())
    }

    /// Per node, a metric without labels (e.g. `pikett_ingest_batches_total`); `None` for a
    /// node that is not running or does not answer.
    fn metric_each(&self, name: &str) -> Vec<Option<f64>> {
        (0..3).map(|i| self.procs[i].as_ref().and_then(|_| metric(self.nodes[i].http_port, name))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A process stopped by a failed test must not outlive it stopped.
        for p in self.procs.iter().flatten() {
            // SAFETY: kill(2) on a pid this test started.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGCONT) };
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The value of an unlabelled metric in a collector's `/metrics`.
fn metric(http_port: u16, name: &str) -> Option<f64> {
    let (status, body) = http_get(http_port, "/metrics")?;
    if status != 200 {
        return None;
    }
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The paging configuration of [`Cluster::new`]: alice (primary), bob (secondary) and carol
/// (management) are paged by webhook at `receiver`; the next role after `ack_timeout`.
fn paging(receiver: &Receiver, ack_timeout: &str, node: &str) -> String {
    let mut people = String::new();
    for (person, role) in [("alice", "primary"), ("bob", "secondary"), ("carol", "management")] {
        people.push_str(&format!(
            "[people.{person}]\nrules = [ {{ channel = \"webhook\" }} ]\n\n[[rotations]]\nrole = \"{role}\"\n\
             members = [\"{person}\"]\nstart = \"2026-01-05T09:00:00\"\nperiod = \"1w\"\ntimezone = \"Europe/Berlin\"\n\n"
        ));
    }
    format!(
        r#"
[faults]
for = 1

{people}
[escalation]
ack_timeout = "{ack_timeout}"
repeat = 0
warning_channel = "webhook"

[channels.webhook]
url = "{url}"
headers = {{ "X-Pikett-Node" = "{node}" }}

[outbox]
initial_backoff = "300ms"
max_backoff = "1s"
max_attempts = 50
"#,
        url = receiver.url(),
    )
}

/// One webhook request as the receiver saw it.
#[derive(Debug, Clone)]
struct Page {
    key: String,
    node: String,
    to: String,
    kind: String,
    fault_id: String,
    body: serde_json::Value,
    at: SystemTime,
}

fn pages(receiver: &Receiver) -> Vec<Page> {
    receiver
        .requests()
        .into_iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
            let s = |k: &str| body[k].as_str().unwrap_or_default().to_string();
            Page {
                key: r.headers.get("idempotency-key").cloned().unwrap_or_default(),
                node: r.headers.get("x-pikett-node").cloned().unwrap_or_default(),
                to: s("to"),
                kind: s("kind"),
                fault_id: s("fault_id"),
                body,
                at: r.at,
            }
        })
        .collect()
}

fn pages_to(receiver: &Receiver, fault: &str, who: &str) -> Vec<Page> {
    pages(receiver).into_iter().filter(|p| p.fault_id == fault && p.to == who).collect()
}

fn show(pages: &[Page]) -> String {
    pages.iter().map(|p| format!("  {} {} to {} ({}) from {}\n", p.key, p.kind, p.to, p.fault_id, p.node)).collect()
}

/// Every key stands for one notification (a repeat is the same notification: the same
/// body), and no notification (fault, recipient, kind) went out under two keys.
fn assert_keys_consistent(all: &[Page]) {
    let mut by_key: BTreeMap<&str, &Page> = BTreeMap::new();
    let mut keys_of: BTreeMap<(&str, &str, &str), BTreeSet<&str>> = BTreeMap::new();
    for p in all {
        assert!(!p.key.is_empty(), "a webhook request without Idempotency-Key:\n{}", show(all));
        assert!(p.key.starts_with(&format!("{}/", p.fault_id)), "key {} is not FAULT/STEP of {}", p.key, p.fault_id);
        if let Some(first) = by_key.get(p.key.as_str()) {
            assert_eq!(first.body, p.body, "key {} was sent for two different notifications", p.key);
        } else {
            by_key.insert(&p.key, p);
        }
        keys_of.entry((&p.fault_id, &p.to, &p.kind)).or_default().insert(&p.key);
    }
    for ((fault, to, kind), keys) in &keys_of {
        assert_eq!(keys.len(), 1, "fault {fault}: {kind} to {to} sent under several keys {keys:?}:\n{}", show(all));
    }
}

fn since(t: SystemTime, at: SystemTime) -> f64 {
    at.duration_since(t).map(|d| d.as_secs_f64()).unwrap_or_else(|e| -e.duration().as_secs_f64())
}

/// The open fault of `command/ctl` on `host`, asked through node `via`.
fn wait_fault(cluster: &Cluster, via: usize, host: &str, limit: Duration) -> serde_json::Value {
    wait_for(limit, || find_fault(&cluster.nodes[via], &cluster.ca, host, "command/ctl", "open"))
        .unwrap_or_else(|| panic!("no fault opened for {host} (asked through c{}):\n{}", via + 1, cluster.logs()))
}

/// The nodes other than those in `not`, in order.
fn other(not: &[usize]) -> Vec<usize> {
    (0..3).filter(|i| !not.contains(i)).collect()
}

/// The agent's last "agent stopped" line says its spool is empty.
fn assert_spool_empty(agent: &Proc) {
    let log = agent.log_text();
    let line = log.lines().rev().find(|l| l.contains("agent stopped")).unwrap_or_else(|| {
        panic!("the agent did not log its stop:\n{}", tail(&log, 40));
    });
    assert!(line.contains("pending=0"), "the agent stopped with batches left in its spool: {line}");
}

/// Stored sequence numbers are 1..=N in one spool epoch: nothing lost, nothing twice.
fn assert_no_gap(stored: &[(i64, i64)], host: &str) -> i64 {
    assert!(!stored.is_empty(), "nothing stored for {host}");
    let epochs: BTreeSet<i64> = stored.iter().map(|(e, _)| *e).collect();
    assert_eq!(epochs.len(), 1, "{host}: several spool epochs {epochs:?}");
    let seqs: Vec<i64> = stored.iter().map(|(_, s)| *s).collect();
    let n = seqs.len() as i64;
    let missing: Vec<i64> = {
        let have: BTreeSet<i64> = seqs.iter().copied().collect();
        (1..=*seqs.last().unwrap()).filter(|s| !have.contains(s)).collect()
    };
    assert!(
        missing.is_empty(),
        "{host}: seqs missing in the store: {missing:?} (stored {n}, last {})",
        seqs[seqs.len() - 1]
    );
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{host}: stored seqs are not 1..={n}");
    n
}

#[test]
fn three_collectors_one_leader_and_status_from_any_node() {
    let mut cluster = Cluster::new(|_| String::new());
    let started = Instant::now();
    cluster.start_all();
    let ready = started.elapsed();
    let leader = cluster.wait_leader(Duration::from_secs(10), None);
    let elected = started.elapsed();
    let leader = leader.unwrap_or_else(|| {
        panic!("no single leader within 10 s (leading: {:?}):\n{}", cluster.leaders(), cluster.logs())
    });
    println!("ha: 3 collectors ready after {ready:?}; c{} leads after {elected:?}", leader + 1);
    // It stays one: never two at once over a few lease renewals.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let now = cluster.leaders();
        assert_eq!(now, vec![leader], "the leadership moved or doubled:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    let leader_name = format!("c{}", leader + 1);
    for via in 0..3 {
        let out = cluster.pikett(via, &["status", "--output", "json"]);
        let status = one_json_line(&out);
        let cluster_rows = status["cluster"].as_array().cloned().unwrap_or_default();
        println!(
            "ha: pikett status via c{}: leader {}, term {}, {} nodes",
            via + 1,
            status["leader"],
            status["term"],
            cluster_rows.len()
        );
        assert_eq!(cluster_rows.len(), 3, "via c{}: {status}", via + 1);
        let nodes: BTreeSet<&str> = cluster_rows.iter().filter_map(|n| n["node"].as_str()).collect();
        assert_eq!(nodes, BTreeSet::from(["c1", "c2", "c3"]), "via c{}: {status}", via + 1);
        assert_eq!(status["leader"], leader_name.as_str(), "via c{}: {status}", via + 1);
        for n in &cluster_rows {
            let want = if n["node"] == leader_name.as_str() { "leader" } else { "follower" };
            assert_eq!(n["role"], want, "via c{}: {status}", via + 1);
        }
        assert!(status["term"].as_i64().unwrap_or(0) >= 1, "{status}");
    }
}

#[test]
fn kill_9_of_the_leader_while_faults_page() {
    let hook = Receiver::start(200);
    let mut cluster = Cluster::new(|node| paging(&hook, "4s", node));
    cluster.start_all();
    let leader =
        cluster.wait_leader(Duration::from_secs(10), None).unwrap_or_else(|| panic!("no leader:\n{}", cluster.logs()));
    let followers = other(&[leader]);
    // The agent streams to a follower: the kill takes the leader away, not the agent's stream.
    let check = ControlledCheck::new(cluster.path());
    let cfg = cluster.agent_config("pay-01", &[followers[0], followers[1], leader], &check.toml(), "");
    let _agent = spawn("pikett-agent", &cfg, &["run"], &cluster.path().join("agent.log"));
    std::thread::sleep(Duration::from_secs(1));
    check.set(2);
    // Asked through a follower: the CLI follows its redirect to the leader.
    let fault = wait_fault(&cluster, followers[0], "pay-01", Duration::from_secs(20));
    let id = fault["id"].as_u64().unwrap().to_string();

    let first = wait_for(Duration::from_secs(10), || pages_to(&hook, &id, "alice").into_iter().next())
        .unwrap_or_else(|| panic!("alice (primary) was not paged:\n{}", cluster.logs()));
    assert_eq!(first.node, format!("c{}", leader + 1), "the first page came from a follower");
    cluster.kill9(leader);
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    let next = cluster.wait_leader(Duration::from_secs(20), Some(leader));
    let failover = killed.elapsed();
    let next = next.unwrap_or_else(|| panic!("no new leader 20 s after the kill:\n{}", cluster.logs()));
    println!("ha: kill -9 of leader c{}: c{} leads after {failover:?}", leader + 1, next + 1);
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");

    // Every step is delivered: bob (due 4 s after alice, during the failover) and carol.
    let done = wait_for(Duration::from_secs(30), || {
        let (bob, carol) = (pages_to(&hook, &id, "bob"), pages_to(&hook, &id, "carol"));
        (!bob.is_empty() && !carol.is_empty()).then(|| (bob[0].clone(), carol[0].clone()))
    });
    let (bob, carol) = done.unwrap_or_else(|| {
        panic!(
            "not every escalation step was delivered after the failover:\n{}\n{}",
            show(&pages(&hook)),
            cluster.logs()
        )
    });
    let t0 = first.at;
    println!(
        "ha: pages of fault {id}: alice at 0 s by {}, bob at {:.1} s by {}, carol at {:.1} s by {} (kill at {:.1} s)",
        first.node,
        since(t0, bob.at),
        bob.node,
        since(t0, carol.at),
        carol.node,
        since(t0, killed_at)
    );
    let new_name = format!("c{}", next + 1);
    assert_eq!(bob.node, new_name, "bob paged by another node than the new leader");
    assert_eq!(carol.node, new_name, "carol paged by another node than the new leader");
    // Settle, then check every key: one per step, repeats are the same notification.
    std::thread::sleep(Duration::from_secs(2));
    let all = pages(&hook);
    print!("ha: every webhook request:\n{}", show(&all));
    assert_keys_consistent(&all);
    let repeats = all.len() - all.iter().map(|p| &p.key).collect::<BTreeSet<_>>().len();
    println!("ha: {} requests, {} distinct keys, {repeats} exact repeats", all.len(), all.len() - repeats);
    let listed: Vec<String> = faults(&cluster.nodes[followers[0]], &cluster.ca)
        .iter()
        .map(|f| {
            format!("{} {}:{} {} {} ({})", f["id"], f["host"], f["check"], f["severity"], f["state"], f["summary"])
        })
        .collect();
    println!("ha: faults on the cluster: {listed:?}");
    // The timeline on the new leader tells the whole chain.
    let shown = cluster.pikett(followers[0], &["fault", "show", &id]);
    let text = success_stdout(&shown);
    assert!(
        text.contains("paging primary: alice") && text.contains("paging secondary: bob") && text.contains("carol"),
        "{text}"
    );
}

#[test]
fn a_stopped_leader_is_fenced_when_it_wakes() {
    let hook = Receiver::start(200);
    let mut cluster = Cluster::new(|node| paging(&hook, "5s", node));
    cluster.start_all();
    let leader =
        cluster.wait_leader(Duration::from_secs(10), None).unwrap_or_else(|| panic!("no leader:\n{}", cluster.logs()));
    let followers = other(&[leader]);
    let check = ControlledCheck::new(cluster.path());
    let cfg = cluster.agent_config("db-01", &[followers[0], followers[1], leader], &check.toml(), "");
    let _agent = spawn("pikett-agent", &cfg, &["run"], &cluster.path().join("agent.log"));
    std::thread::sleep(Duration::from_secs(1));
    check.set(2);
    let fault = wait_fault(&cluster, followers[0], "db-01", Duration::from_secs(20));
    let id = fault["id"].as_u64().unwrap().to_string();
    let first = wait_for(Duration::from_secs(10), || pages_to(&hook, &id, "alice").into_iter().next())
        .unwrap_or_else(|| panic!("alice (primary) was not paged:\n{}", cluster.logs()));
    let old_name = format!("c{}", leader + 1);
    assert_eq!(first.node, old_name);

    // Stop the leader for 2 × ttl + 1 s: bob's step falls due while it sleeps.
    let pid = cluster.pid(leader);
    // SAFETY: kill(2) on the collector this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let next = cluster.wait_leader(Duration::from_secs(15), Some(leader));
    let takeover = stopped.elapsed();
    let next = next.unwrap_or_else(|| {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        panic!("no new leader while c{} was stopped:\n{}", leader + 1, cluster.logs())
    });
    println!("ha: SIGSTOP of leader c{}: c{} leads after {takeover:?}", leader + 1, next + 1);
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}\n{}\n===== PostgreSQL log:\n{}",
        cluster.logs(),
        tail(&std::fs::read_to_string(pg_data_dir().join("log")).unwrap_or_default(), 30)
    );
    let wake = TTL * 2 + Duration::from_secs(1);
    std::thread::sleep(wake.saturating_sub(stopped.elapsed()));
    let keys_before: BTreeSet<String> = pages(&hook).into_iter().map(|p| p.key).collect();
    let woke_at = SystemTime::now();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let woke = Instant::now();

    // It finds its lease gone and exits at once with 75 (EX_TEMPFAIL).
    let exited =
        wait_for(Duration::from_secs(10), || cluster.procs[leader].as_mut().unwrap().child.try_wait().ok().flatten());
    let after_wake = woke.elapsed();
    let status = exited.unwrap_or_else(|| {
        panic!("c{} still runs {after_wake:?} after waking:\n{}", leader + 1, tail(&cluster.log(leader), 60))
    });
    println!(
        "ha: c{} stopped for {:?}, exited {after_wake:?} after SIGCONT with {status}",
        leader + 1,
        woke.duration_since(stopped)
    );
    cluster.procs[leader] = None;
    assert_eq!(status.code(), Some(75), "the woken leader's exit; log:\n{}", tail(&cluster.log(leader), 60));
    assert!(after_wake < Duration::from_secs(5), "the woken leader took {after_wake:?} to exit");

    // The chain goes on from the new leader; the old one sent nothing new after waking.
    let carol = wait_for(Duration::from_secs(30), || pages_to(&hook, &id, "carol").into_iter().next());
    let all = pages(&hook);
    print!("ha: every webhook request:\n{}", show(&all));
    let carol = carol.unwrap_or_else(|| panic!("carol (management) was not paged:\n{}", cluster.logs()));
    let bob = pages_to(&hook, &id, "bob");
    assert!(!bob.is_empty(), "bob (secondary) was not paged");
    let new_name = format!("c{}", next + 1);
    assert_eq!(bob[0].node, new_name, "bob paged by {}, not the new leader", bob[0].node);
    assert_eq!(carol.node, new_name, "carol paged by {}, not the new leader", carol.node);
    let from_old_after: Vec<Page> = all.iter().filter(|p| p.node == old_name && p.at >= woke_at).cloned().collect();
    let new_keys: Vec<&Page> = from_old_after.iter().filter(|p| !keys_before.contains(&p.key)).collect();
    println!("ha: requests from the woken c{} after SIGCONT: {}", leader + 1, from_old_after.len());
    assert!(new_keys.is_empty(), "the woken leader sent new notifications:\n{}", show(&from_old_after));
    assert!(from_old_after.is_empty(), "the woken leader sent after waking:\n{}", show(&from_old_after));
    assert_keys_consistent(&all);
    let log = cluster.log(leader);
    println!("ha: last lines of the fenced c{}:\n{}", leader + 1, tail(&log, 5));
    assert!(log.contains("stepping down"), "the woken leader did not log its step-down:\n{}", tail(&log, 20));
}

#[test]
fn kill_9_of_the_collector_an_agent_streams_to() {
    let mut cluster = Cluster::new(|_| String::new());
    cluster.start_all();
    let leader =
        cluster.wait_leader(Duration::from_secs(10), None).unwrap_or_else(|| panic!("no leader:\n{}", cluster.logs()));
    let cfg = cluster.agent_config("web-01", &[0, 1, 2], "[host]\ninterval = \"500ms\"\n", "");
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &cluster.path().join("agent.log"));

    // Whom it streams to: the node whose gauge says one stream (normally c1, the first listed).
    let streaming = |cluster: &Cluster| {
        (0..3)
            .filter(|&i| cluster.procs[i].is_some())
            .find(|&i| metric(cluster.nodes[i].http_port, "pikett_ingest_streams").unwrap_or(0.0) >= 1.0)
    };
    let target = wait_for(Duration::from_secs(15), || streaming(&cluster))
        .unwrap_or_else(|| panic!("no collector has the agent's stream; agent log:\n{}", agent.log_text()));
    let some = wait_for(Duration::from_secs(15), || {
        let n = cluster.stored("web-01").len();
        (n >= 10).then_some(n)
    });
    assert!(some.is_some(), "the agent's batches are not stored:\n{}", cluster.logs());
    let before = cluster.stored("web-01").len();
    println!("ha: the agent streams to c{} (leader c{}); {before} batches stored", target + 1, leader + 1);

    cluster.kill9(target);
    let killed = Instant::now();
    let moved = wait_for(Duration::from_secs(20), || streaming(&cluster).filter(|&i| i != target));
    let reconnect = killed.elapsed();
    let moved = moved.unwrap_or_else(|| {
        panic!("the agent did not reconnect to another collector; agent log:\n{}", tail(&agent.log_text(), 40))
    });
    println!("ha: kill -9 of c{}: the agent streams to c{} after {reconnect:?}", target + 1, moved + 1);
    if target == leader {
        let next = cluster.wait_leader(Duration::from_secs(15), Some(leader));
        println!("ha: the killed node led; now leading: {:?}", next.map(|n| format!("c{}", n + 1)));
    }
    // Some more batches on the new stream, then a clean stop, which drains the spool.
    let grown = wait_for(Duration::from_secs(15), || {
        let n = cluster.stored("web-01").len();
        (n >= before + 10).then_some(n)
    });
    assert!(grown.is_some(), "no batches stored after the failover:\n{}", cluster.logs());
    assert_eq!(agent.sigterm(Duration::from_secs(20)), Some(0), "agent log:\n{}", tail(&agent.log_text(), 40));
    assert_spool_empty(&agent);

    let stored = cluster.stored("web-01");
    let n = assert_no_gap(&stored, "web-01");
    let head = cluster.query_i64("SELECT max(last_seq) FROM pikett_batch_heads WHERE host = $1", "web-01");
    let counted = cluster.query_i64("SELECT batches FROM pikett_hosts WHERE host_id = $1", "web-01");
    println!("ha: {n} batches stored, seqs 1..={n} without a gap; head {head:?}, host counter {counted:?}");
    assert_eq!(head, Some(n), "pikett_batch_heads disagrees with the stored batches");
    assert_eq!(counted, Some(n), "the host's batch counter counted a batch twice (or missed one)");
    cluster.assert_all_evaluated("web-01", n);
}

/// The directory of this binary's test PostgreSQL (`store::pg::testing` names it after our pid).
fn pg_data_dir() -> PathBuf {
    let prefix = format!("pikett-pg-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|e| e.path().join("data"))
        .expect("the test PostgreSQL's directory")
}

/// Runs the test server's `pg_ctl ARGS` (as `postgres` when we are root, as `testing` does).
fn pg_ctl(args: &[&str]) {
    let data = pg_data_dir();
    let bin = "/usr/lib/postgresql/15/bin/pg_ctl";
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", bin]);
        c
    } else {
        std::process::Command::new(bin)
    };
    // The server's output goes to its log (-l): a pipe would keep `output()` waiting on it.
    let out = cmd
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(data.join("log"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn postgres_restarted_under_load() {
    let hook = Receiver::start(200);
    let mut cluster = Cluster::new(|node| paging(&hook, "1h", node));
    cluster.start_all();
    let leader =
        cluster.wait_leader(Duration::from_secs(10), None).unwrap_or_else(|| panic!("no leader:\n{}", cluster.logs()));
    let check = ControlledCheck::new(cluster.path());
    let extra = format!("{}\n[host]\ninterval = \"500ms\"\n", check.toml());
    // The agent streams to a follower: its acknowledgements are what the outage must stop.
    let followers = other(&[leader]);
    let cfg = cluster.agent_config("load-01", &[followers[0], followers[1], leader], &extra, "ack_timeout = \"5s\"");
    let mut agent = spawn("pikett-agent", &cfg, &["run"], &cluster.path().join("agent.log"));
    let flowing = wait_for(Duration::from_secs(15), || (cluster.stored("load-01").len() >= 10).then_some(()));
    assert!(flowing.is_some(), "the agent's batches are not stored:\n{}", cluster.logs());

    // PostgreSQL goes down (fast shutdown: sessions are cut), and a check fails meanwhile.
    pg_ctl(&["-m", "fast", "-w", "stop"]);
    let down = Instant::now();
    check.set(2);
    std::thread::sleep(Duration::from_millis(500));
    let acked_at_stop = cluster.metric_each("pikett_ingest_batches_total");
    std::thread::sleep(Duration::from_millis(2500));
    let acked_before_start = cluster.metric_each("pikett_ingest_batches_total");
    // `restart` of a stopped server starts it with the options it last ran with.
    pg_ctl(&["-m", "fast", "-w", "restart"]);
    let outage = down.elapsed();
    println!(
        "ha: PostgreSQL down for {outage:?}; batches stored per node at +0.5 s {acked_at_stop:?}, at +3 s \
         {acked_before_start:?}"
    );
    for i in 0..3 {
        if let (Some(a), Some(b)) = (acked_at_stop[i], acked_before_start[i]) {
            assert_eq!(a, b, "c{} acknowledged batches while PostgreSQL was down", i + 1);
        }
    }
    // Acknowledgements resume: a node's stored-batches counter moves again.
    let resumed = wait_for(Duration::from_secs(20), || {
        let now = cluster.metric_each("pikett_ingest_batches_total");
        (0..3).any(|i| matches!((now[i], acked_before_start[i]), (Some(a), Some(b)) if a > b)).then_some(now)
    });
    println!("ha: batches stored again {:?} after PostgreSQL was back: {resumed:?}", down.elapsed() - outage);
    assert!(resumed.is_some(), "no collector stored a batch after PostgreSQL came back:\n{}", cluster.logs());
    assert!(
        acked_before_start.iter().any(Option::is_some),
        "no collector answered /metrics while PostgreSQL was down:\n{}",
        cluster.logs()
    );

    // After: the fault opened from the batches spooled meanwhile pages.
    let fault = wait_for(Duration::from_secs(30), || {
        cluster.running().find_map(|i| find_fault(&cluster.nodes[i], &cluster.ca, "load-01", "command/ctl", "open"))
    })
    .unwrap_or_else(|| panic!("no fault opened after PostgreSQL came back:\n{}", cluster.logs()));
    let id = fault["id"].as_u64().unwrap().to_string();
    let paged = wait_for(Duration::from_secs(15), || pages_to(&hook, &id, "alice").into_iter().next());
    let since_up = down.elapsed() - outage;
    let paged = paged.unwrap_or_else(|| panic!("the fault opened meanwhile was not paged:\n{}", cluster.logs()));
    println!("ha: fault {id} paged by {} {since_up:?} after PostgreSQL was back", paged.node);

    // Who survived the outage, and who leads now.
    for i in 0..3 {
        if let Some(p) = cluster.procs[i].as_mut() {
            match p.child.try_wait() {
                Ok(Some(status)) => println!(
                    "ha: c{} exited during the outage: {status}; its last lines:\n{}",
                    i + 1,
                    tail(&cluster.log(i), 12)
                ),
                _ => println!("ha: c{} runs", i + 1),
            }
        }
    }
    println!(
        "ha: leader before c{}, now {:?}",
        leader + 1,
        cluster.leaders().iter().map(|i| i + 1).collect::<Vec<_>>()
    );

    let more = cluster.stored("load-01").len() + 5;
    let grown = wait_for(Duration::from_secs(15), || (cluster.stored("load-01").len() >= more).then_some(()));
    assert!(grown.is_some(), "storing did not resume:\n{}", cluster.logs());
    assert_eq!(agent.sigterm(Duration::from_secs(20)), Some(0), "agent log:\n{}", tail(&agent.log_text(), 40));
    assert_spool_empty(&agent);
    let uplink: Vec<String> = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("collector") && !l.contains("agent starting"))
        .map(|l| l.chars().take(220).collect())
        .collect();
    println!("ha: the agent's uplink log:\n{}", uplink.join("\n"));
    let stored = cluster.stored("load-01");
    let n = assert_no_gap(&stored, "load-01");
    let counted = cluster.query_i64("SELECT batches FROM pikett_hosts WHERE host_id = $1", "load-01");
    println!("ha: {n} batches stored once each, seqs 1..={n}; host counter {counted:?}");
    assert_eq!(counted, Some(n), "the host's batch counter counted a batch twice (or missed one)");
    cluster.assert_all_evaluated("load-01", n);
    let all = pages(&hook);
    assert_keys_consistent(&all);
    let alice: Vec<&Page> = all.iter().filter(|p| p.fault_id == id && p.to == "alice").collect();
    println!("ha: {} requests to alice for fault {id}", alice.len());
}

/// SIGTERM of the leader (an upgrade, a planned switchover): it flushes, gives the lease up
/// and exits 0, and another collector leads at once instead of after the lease's expiry.
#[test]
fn a_clean_stop_of_the_leader_hands_over_at_once() {
    let mut cluster = Cluster::new(|_| String::new());
    cluster.start_all();
    let leader = cluster
        .wait_leader(Duration::from_secs(10), None)
        .unwrap_or_else(|| panic!("no single leader:\n{}", cluster.logs()));
    let mut proc = cluster.procs[leader].take().expect("running");
    let stopped = Instant::now();
    let code = proc.sigterm(Duration::from_secs(15));
    let exited = stopped.elapsed();
    let next = cluster.wait_leader(Duration::from_secs(10), Some(leader));
    let took = stopped.elapsed();
    let log = proc.log_text();
    println!(
        "ha: SIGTERM of leader c{}: exited {code:?} after {exited:?}; next leader {next:?} after {took:?}",
        leader + 1
    );
    assert_eq!(code, Some(0), "a clean stop is not a failure:\n{}", tail(&log, 30));
    assert!(log.contains("leader lease released"), "{}", tail(&log, 30));
    assert!(!log.contains("exiting (status 75)"), "{}", tail(&log, 30));
    let next = next.unwrap_or_else(|| panic!("nobody took over:\n{}", cluster.logs()));
    assert_ne!(next, leader);
    // Released, not expired: an expired lease frees about a lease period after the last
    // renewal, which the stopping leader kept sending until its release.
    assert!(took < exited + Duration::from_secs(3), "took over after {took:?} (exit after {exited:?}, ttl {TTL:?})");
}
