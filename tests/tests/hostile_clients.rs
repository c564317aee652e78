//! Hostile clients against the real collector over TLS: samples named like the
//! collector's own metrics with colliding labels, a client without a certificate that
//! opens many streams and sends nothing, a client with a certificate that never says
//! hello, an oversized message, a host id with a newline. The collector keeps serving a
//! real agent, `/metrics` keeps passing `promtool check metrics`, and its memory stays
//! within a budget.

use std::time::Duration;

use pikett_agent::config::TlsConfig;
use pikett_proto::v1 as pb;
use pikett_proto::v1::ingest_client::IngestClient;
use pikett_tests::*;
use tokio::sync::mpsc;

fn hello(host: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            protocol_version: pikett_proto::PROTOCOL_VERSION,
            host_id: host.into(),
            customer: "acme".into(),
            agent_version: "evil".into(),
            capabilities: vec![],
            min_interval_ms: 1000,
            spool_epoch: 7,
        })),
    }
}

fn sample(name: &str, labels: &[(&str, &str)]) -> pb::Sample {
    pb::Sample {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        value: 1.0,
        unit: String::new(),
        time_unix_ms: 0,
    }
}

fn tls(pki: &Pki, host: Option<&str>) -> TlsConfig {
    TlsConfig {
        ca_file: Some(pki.path("ca.pem").into()),
        cert_file: host.map(|h| pki.path(&format!("{h}.pem")).into()),
        key_file: host.map(|h| pki.path(&format!("{h}.key")).into()),
        server_name: None,
    }
}

/// Sends `messages` on one stream; the first answer, or the status it ended with.
async fn first_answer(
    collector: &CollectorSetup,
    tls: &TlsConfig,
    messages: Vec<pb::AgentMessage>,
    wait: Duration,
) -> Result<Option<pb::CollectorMessage>, tonic::Status> {
    let channel = pikett_agent::uplink::connect(&collector.url(), Some(tls)).await.expect("connect");
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let mut client = IngestClient::new(channel).max_encoding_message_size(64 << 20);
    let mut inbound = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let answer = tokio::time::timeout(wait, inbound.message()).await.map_err(|_| tonic::Status::cancelled("quiet"))?;
    drop(tx);
    answer
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn promtool_check(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (Debian package prometheus): {e}"))?;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn hostile_clients_cannot_break_the_collector_or_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let c = collector.start();
    let pid = c.child.id();
    for host in ["evil-01", "quiet-01"] {
        pki.agent_cert(host);
    }
    // A real agent that must keep being served throughout.
    let cfg = agent_config(dir.path(), &pki, "good-01", &collector.url(), "[host]\ninterval = \"300ms\"\n");
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let rss_before = wait_for(Duration::from_secs(20), || {
        let (_, body) = http_get(collector.http_port, "/metrics")?;
        body.contains("host=\"good-01\"").then(|| rss_kib(pid))
    })
    .expect("the real agent never showed on /metrics");

    // Connections that never start TLS: beyond 16 per peer they are closed at once, and
    // the rest at the handshake deadline.
    let held: Vec<std::net::TcpStream> =
        (0..40).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", collector.grpc_port)).ok()).collect();
    assert_eq!(held.len(), 40);
    let closed_at_once = wait_for(Duration::from_secs(10), || {
        let (_, body) = http_get(collector.http_port, "/metrics")?;
        let line = body.lines().find(|l| l.contains("rejected_connections") && l.contains("too_many_handshakes"))?;
        (line.split_whitespace().last()?.parse::<f64>().ok()? >= 24.0).then_some(())
    });
    assert!(closed_at_once.is_some(), "connections beyond the per-peer limit were kept");
    // The rest are closed at the handshake deadline (every test client shares 127.0.0.1, so
    // the test waits for that before it goes on).
    for mut c in held {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 1];
        let closed = match c.read(&mut buf) {
            Ok(0) => true,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            Ok(_) => false,
        };
        assert!(closed, "a connection without a handshake stayed open");
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Samples named like the collector's metrics, reserved and colliding labels.
        let evil = vec![
            sample("pikett_hosts", &[("status", "up")]),
            sample("up", &[]),
            sample("pikett_ingest_batches_total", &[]),
            sample("pikett_evil_total", &[("__name__", "x"), ("a-b", "1"), ("a_b", "2")]),
            sample("pikett_evil", &[("host", "spoofed"), ("exported_host", "also"), ("customer", "other")]),
            sample("pikett_evil.dup", &[]),
            sample("pikett_evil_dup", &[]),
            sample("9lives", &[("", "empty label name")]),
        ];
        let batch = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Batch(pb::Batch { seq: 1, samples: evil, ..Default::default() })),
        };
        let answer = first_answer(
            &collector,
            &tls(&pki, Some("evil-01")),
            vec![hello("evil-01"), batch],
            Duration::from_secs(5),
        )
        .await
        .expect("the hostile batch was refused");
        assert!(answer.is_some());

        // Without a certificate: refused at once, however many streams it opens.
        let mut refused = 0;
        for _ in 0..200 {
            if let Err(s) = first_answer(&collector, &tls(&pki, None), vec![], Duration::from_secs(5)).await {
                assert!(s.message().contains("client certificate") || s.code() == tonic::Code::Unavailable, "{s:?}");
                refused += 1;
            }
        }
        assert_eq!(refused, 200, "a stream without a certificate was kept open");

        // With a certificate but never a hello: closed after the hello deadline.
        let started = std::time::Instant::now();
        let quiet = first_answer(&collector, &tls(&pki, Some("quiet-01")), vec![], Duration::from_secs(20)).await;
        let status = quiet.expect_err("a stream without a hello was kept open");
        assert!(status.message().contains("no hello within"), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(15));

        // An oversized message: refused, nothing stored.
        let huge = pb::Sample { name: "x".repeat(20 << 20), ..Default::default() };
        let batch = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Batch(pb::Batch { seq: 2, samples: vec![huge], ..Default::default() })),
        };
        // Whatever comes back (a welcome first, perhaps), the oversized batch is never
        // acknowledged: the stream ends with an error instead.
        let channel =
            pikett_agent::uplink::connect(&collector.url(), Some(&tls(&pki, Some("evil-01")))).await.expect("connect");
        let (tx, rx) = mpsc::channel(4);
        tx.send(hello("evil-01")).await.unwrap();
        tx.send(batch).await.unwrap();
        let mut client = IngestClient::new(channel).max_encoding_message_size(64 << 20);
        let mut ended_with_error = false;
        if let Ok(response) = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            let mut inbound = response.into_inner();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
                    Ok(Ok(Some(pb::CollectorMessage { body: Some(pb::collector_message::Body::Ack(a)) }))) => {
                        panic!("the oversized batch {} was acknowledged", a.seq)
                    }
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(status)) => {
                        assert!(status.message().contains("too large"), "{status:?}");
                        ended_with_error = true;
                        break;
                    }
                    Ok(Ok(None)) | Err(_) => break,
                }
            }
        } else {
            ended_with_error = true;
        }
        assert!(ended_with_error, "an oversized batch did not end the stream with an error");
        drop(tx);

        // A host id with a newline: refused, naming the rule.
        let status =
            first_answer(&collector, &tls(&pki, Some("evil-01")), vec![hello("evil\n01")], Duration::from_secs(5))
                .await
                .expect_err("a host id with a newline was accepted");
        assert!(status.message().contains("is not valid"), "{status:?}");
    });

    // The real agent is still served, and /metrics passes promtool with the hostile series.
    let text = wait_for(Duration::from_secs(20), || {
        let (_, body) = http_get(collector.http_port, "/metrics")?;
        body.contains("pikett_agent_up{host=\"evil-01\"").then_some(body)
    })
    .expect("the hostile samples never showed (renamed) on /metrics");
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool check metrics failed:\n{e}\n--- exposition:\n{text}"));
    assert!(
        !text.lines().any(|l| l.starts_with("pikett_hosts{") && l.contains("evil-01")),
        "an agent shadowed pikett_hosts"
    );
    assert!(text.contains("pikett_agent_pikett_hosts{host=\"evil-01\""), "{text}");
    assert!(text.contains("exported_host=\"spoofed\""), "{text}");
    assert!(text.contains("host=\"good-01\""));
    let hosts = json_lines(&collector.pikett(&["hosts", "--output", "json"], &pki.path("ca.pem")).stdout);
    assert!(hosts.iter().all(|h| !h["host_id"].as_str().unwrap().contains('\n')), "{hosts:?}");
    let good = hosts.iter().find(|h| h["host_id"] == "good-01").unwrap();
    assert_eq!(good["status"], "up", "the real agent was not served: {good}");

    // Memory: the refused clients left nothing behind (budget: 64 MiB over the start).
    let rss_after = rss_kib(pid);
    assert!(rss_after < rss_before + 64 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
    eprintln!("hostile_clients: collector RSS {rss_before} KiB before, {rss_after} KiB after");
    drop(agent);
}

#[test]
fn a_storm_of_ten_thousand_failing_checks_pages_a_handful_of_times() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let sms = Receiver::start(200);
    let config =
        alice_paged_by_sms(&sms, "", "").replace("[faults]\nfor = 1\n", "[faults]\nfor = 1\nstorm_faults = 5\n");
    assert!(config.contains("storm_faults = 5"));
    let collector = CollectorSetup::new(dir.path(), &pki, &config);
    let c = collector.start();
    pki.agent_cert("storm-01");
    let rss_before = rss_kib(c.child.id());
    let checks: Vec<pb::CheckResult> = (0..10_000)
        .map(|i| {
            pb::CheckResult::new(format!("command/c{i}"), pb::CheckStatus::Critical, "CRITICAL - broken".into(), 0)
        })
        .collect();
    let batch = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Batch(pb::Batch { seq: 1, checks, ..Default::default() })),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = tls(&pki, Some("storm-01"));
        let channel = pikett_agent::uplink::connect(&collector.url(), Some(&tls)).await.expect("connect");
        let (tx, rx) = mpsc::channel(4);
        tx.send(hello("storm-01")).await.unwrap();
        tx.send(batch).await.unwrap();
        let mut inbound = IngestClient::new(channel)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let mut acked = false;
        while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            if matches!(m.body, Some(pb::collector_message::Body::Ack(_))) {
                acked = true;
                break;
            }
        }
        assert!(acked, "the storm batch was not acknowledged");
    });
    // The storm page comes after the first faults' pages (thousands of transitions go through the
    // pager and the incidents first: slower on a loaded machine); then count them all.
    // The test's client goes away after its batch, so host/reachable may page too: not part
    // of the storm.
    let pages_now = || -> Vec<String> {
        sms.requests()
            .into_iter()
            .map(|r| r.body)
            .filter(|b| b.contains(ALICE_SMS) && b.contains("storm-01") && !b.contains("host/reachable"))
            .collect()
    };
    let storm_paged =
        wait_for(Duration::from_secs(90), || pages_now().iter().any(|b| b.contains("host/fault-storm")).then_some(()));
    assert!(storm_paged.is_some(), "no storm page among {} pages", pages_now().len());
    std::thread::sleep(Duration::from_secs(3));
    let pages = pages_now();
    assert!(pages.len() <= 6, "{} pages for one storm (limit 5 + the storm fault): {pages:#?}", pages.len());
    let faults = json_lines(
        &collector.pikett(&["faults", "--host", "storm-01", "--output", "json"], &pki.path("ca.pem")).stdout,
    );
    // The first 5,000 distinct checks (max_checks_per_host) are recorded, plus the storm
    // fault and the one that says checks were ignored.
    assert_eq!(faults.len(), 5_002, "faults recorded");
    assert!(faults.iter().any(|f| f["check"] == "host/too-many-checks"), "no host/too-many-checks fault");
    let (_, metrics) = http_get(collector.http_port, "/metrics").unwrap();
    assert!(metrics.contains("pikett_ingest_checks_over_limit_total 5000"), "the ignored results were not counted");
    let rss_after = rss_kib(c.child.id());
    eprintln!("storm: collector RSS {rss_before} KiB before, {rss_after} KiB after 10,000 failing checks");
    assert!(rss_after < rss_before + 256 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
}

#[test]
fn a_host_with_too_many_series_is_capped_and_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "max_series_per_host = 100\n");
    let _c = collector.start();
    pki.agent_cert("many-01");
    let batch = |seq: u64, series: usize| pb::AgentMessage {
        body: Some(pb::agent_message::Body::Batch(pb::Batch {
            seq,
            samples: (0..series).map(|i| sample("pikett_many", &[("i", &i.to_string())])).collect(),
            ..Default::default()
        })),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = tls(&pki, Some("many-01"));
        let channel = pikett_agent::uplink::connect(&collector.url(), Some(&tls)).await.expect("connect");
        let (tx, rx) = mpsc::channel(8);
        for m in [hello("many-01"), batch(1, 150), batch(2, 150), batch(3, 50)] {
            tx.send(m).await.unwrap();
        }
        let mut inbound = IngestClient::new(channel)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let mut acks = 0;
        while acks < 3 {
            match tokio::time::timeout(Duration::from_secs(20), inbound.message()).await {
                Ok(Ok(Some(pb::CollectorMessage { body: Some(pb::collector_message::Body::Ack(_)) }))) => acks += 1,
                Ok(Ok(Some(_))) => {}
                other => panic!("stream ended early: {other:?}"),
            }
        }
    });
    let (_, text) = http_get(collector.http_port, "/metrics").unwrap();
    let exported = text.lines().filter(|l| l.starts_with("pikett_many{")).count();
    assert_eq!(exported, 100, "series beyond the limit were exported");
    assert!(text.contains("pikett_metrics_series_over_limit_total 100"), "the cut samples were not counted");
    // Two batches over the limit opened the warning; the third, within it, resolved it.
    let all = faults(&collector, &pki.path("ca.pem"));
    let fault = all.iter().find(|f| f["host"] == "many-01" && f["check"] == "host/too-many-series");
    let fault = fault.unwrap_or_else(|| panic!("no host/too-many-series fault: {all:?}"));
    assert_eq!(fault["severity"], "warning");
    assert_eq!(fault["state"], "resolved", "{fault}");
}
