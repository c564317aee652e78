//! 24/7 emergency handling end to end: the real collector and agent, local
//! HTTP receivers standing in for the SMS gateways (the first answers 500) and
//! the voice gateway, and a real SMTP server (aiosmtpd) for e-mail.

use std::time::{Duration, UNIX_EPOCH};

use pikett_tests::*;

const ALICE: &str = "+4915100000001";
const BOB: &str = "+4915100000002";
const CAROL: &str = "+4915100000003";

fn collector_extra(sms: &[&Receiver], voice: &Receiver, smtp_port: u16, ack_timeout: &str, attempts: u32) -> String {
    let gateways: Vec<String> = sms.iter().map(|r| format!("\"{}\"", r.url())).collect();
    format!(
        r#"
[faults]
for = 1

[people.alice]
sms = "{ALICE}"
phone = "{ALICE}"
email = "alice@example.net"
rules = [ {{ channel = "sms", after = "0s" }}, {{ channel = "voice", after = "2m" }} ]

[people.bob]
sms = "{BOB}"
rules = [ {{ channel = "sms" }} ]

[people.carol]
sms = "{CAROL}"
rules = [ {{ channel = "sms" }} ]

[[rotations]]
role = "primary"
members = ["alice"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[[rotations]]
role = "secondary"
members = ["bob"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[[rotations]]
role = "management"
members = ["carol"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[escalation]
ack_timeout = "{ack_timeout}"
repeat = 0

[channels.sms]
gateways = [{gateways}]
body = '{{"to": "{{{{to}}}}", "text": "{{{{text}}}}"}}'

[channels.voice]
url = "{voice}"
body = '{{"to": "{{{{to}}}}", "text": "{{{{text}}}}"}}'

[channels.email]
smtp = "127.0.0.1:{smtp_port}"
from = "pikett@example.net"
starttls = false

[outbox]
initial_backoff = "300ms"
max_backoff = "1s"
max_attempts = {attempts}

[customers.acme]
copy_alerts = true
contacts = [ {{ email = "ops@acme.example" }} ]
"#,
        gateways = gateways.join(", "),
        voice = voice.url(),
    )
}

fn sms_to<'a>(reqs: &'a [Received], number: &str) -> Vec<&'a Received> {
    reqs.iter().filter(|r| r.body.contains(number)).collect()
}

fn ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn primary_is_paged_at_once_secondary_after_ack_timeout_and_ack_stops_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let (sms_a, sms_b, voice) = (Receiver::start(500), Receiver::start(200), Receiver::start(200));
    let smtp = Smtp::start();
    let collector =
        CollectorSetup::new(dir.path(), &pki, &collector_extra(&[&sms_a, &sms_b], &voice, smtp.port, "4s", 5));
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "shop-01", &collector.url(), &check.toml());
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    std::thread::sleep(Duration::from_secs(2));

    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "shop-01", "command/ctl", "open"))
        .expect("no fault opened");
    let id = fault["id"].as_u64().unwrap().to_string();
    let opened_ms = fault["opened_unix_ms"].as_i64().unwrap();

    // The primary: gateway A answers 500, so gateway B must deliver, with the same key.
    let page = wait_for(Duration::from_secs(10), || sms_to(&sms_b.requests(), ALICE).first().map(|r| (*r).clone()))
        .expect("alice was not paged through gateway B");
    assert!(ms(page.at) - opened_ms <= 1000, "primary paged {} ms after the fault opened", ms(page.at) - opened_ms);
    let key = page.headers.get("idempotency-key").expect("Idempotency-Key header").clone();
    let tried_a =
        sms_to(&sms_a.requests(), ALICE).into_iter().map(|r| r.headers["idempotency-key"].clone()).collect::<Vec<_>>();
    assert_eq!(tried_a, vec![key.clone()], "gateway A was not tried first with the same key");
    assert!(page.body.contains("shop-01") && page.body.contains(&format!("pikett ack {id}")), "{}", page.body);

    // No ack: the secondary after ack_timeout (4 s).
    let bob = wait_for(Duration::from_secs(15), || sms_to(&sms_b.requests(), BOB).first().map(|r| (*r).clone()))
        .expect("bob (secondary) was not paged");
    let waited = ms(bob.at) - ms(page.at);
    assert!(waited >= 3500, "secondary paged only {waited} ms after the primary");

    // The premium customer got a copy by e-mail.
    let copy =
        wait_for(Duration::from_secs(10), || smtp.messages().into_iter().find(|m| m.contains("ops@acme.example")));
    assert!(copy.is_some_and(|m| m.contains("shop-01")), "no e-mail copy to the customer");

    // Ack stops the chain: management is never paged.
    let out = collector.pikett(&["ack", &id], &ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_secs(6));
    assert!(sms_to(&sms_b.requests(), CAROL).is_empty(), "management was paged after the ack");

    // Resolution goes to everyone who was paged.
    check.set(0);
    let resolved = wait_for(Duration::from_secs(20), || {
        let reqs = sms_b.requests();
        let n = |who| sms_to(&reqs, who).iter().filter(|r| r.body.to_lowercase().contains("resolved")).count();
        (n(ALICE) >= 1 && n(BOB) >= 1).then_some(())
    });
    assert!(resolved.is_some(), "resolution not sent to alice and bob: {:?}", sms_b.requests());

    // Every step is on the fault's timeline.
    let shown = collector.pikett(&["fault", "show", &id], &ca);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("paging primary: alice") && text.contains("paging secondary: bob"), "{text}");
}

#[test]
fn a_notification_pending_at_sigkill_is_delivered_after_restart_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let (sms_a, sms_b, voice) = (Receiver::start(500), Receiver::start(500), Receiver::start(500));
    let smtp = Smtp::start();
    let collector =
        CollectorSetup::new(dir.path(), &pki, &collector_extra(&[&sms_a, &sms_b], &voice, smtp.port, "10m", 50));
    let mut c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "db-09", &collector.url(), &check.toml());
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "db-09", "command/ctl", "open"));
    assert!(fault.is_some(), "no fault opened");
    let key = wait_for(Duration::from_secs(10), || {
        sms_to(&sms_b.requests(), ALICE).first().map(|r| r.headers["idempotency-key"].clone())
    })
    .expect("no attempt to page alice");

    c.sigkill();
    sms_b.set_status(200);
    let _c = collector.start();
    let delivered = wait_for(Duration::from_secs(20), || {
        sms_to(&sms_b.requests(), ALICE)
            .into_iter()
            .find(|r| r.status == 200)
            .map(|r| r.headers["idempotency-key"].clone())
    });
    assert_eq!(delivered.as_deref(), Some(key.as_str()), "not delivered after restart with the same key");
}

#[test]
fn all_gateways_down_is_visible_on_the_fault_and_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let (sms_a, sms_b, voice) = (Receiver::start(500), Receiver::start(503), Receiver::start(500));
    let smtp = Smtp::start();
    let collector =
        CollectorSetup::new(dir.path(), &pki, &collector_extra(&[&sms_a, &sms_b], &voice, smtp.port, "2s", 2));
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "mail-03", &collector.url(), &check.toml());
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "mail-03", "command/ctl", "open"))
        .expect("no fault opened");
    let id = fault["id"].as_u64().unwrap().to_string();
    let failed = wait_for(Duration::from_secs(40), || {
        let out = collector.pikett(&["fault", "show", &id], &ca);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("NOTIFICATION FAILED").then_some(text)
    });
    assert!(failed.is_some(), "the fault never said that every notification failed");
    let (_, metrics) = http_get(collector.http_port, "/metrics").unwrap();
    assert!(metrics.contains("pikett_notifications_failed_total 1"), "{metrics}");
    // Every role was tried.
    let reqs = sms_b.requests();
    for who in [ALICE, BOB, CAROL] {
        assert!(!sms_to(&reqs, who).is_empty(), "{who} was never tried");
    }
}

#[test]
fn an_emergency_escalated_after_the_ack_can_be_acknowledged_again_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let (sms_a, voice) = (Receiver::start(200), Receiver::start(200));
    let smtp = Smtp::start();
    // repeat = 1: without an ack, the emergency pages the whole chain a second time after 3 s.
    let extra = collector_extra(&[&sms_a], &voice, smtp.port, "3s", 5).replace("repeat = 0", "repeat = 1");
    let collector = CollectorSetup::new(dir.path(), &pki, &extra);
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, "lb-02", &collector.url(), &check.toml());
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, "lb-02", "command/ctl", "open"))
        .expect("no fault opened");
    let id = fault["id"].as_u64().unwrap();
    assert!(collector.pikett(&["ack", &id.to_string()], &ca).status.success());

    let incident = wait_for(Duration::from_secs(10), || {
        let out = collector.pikett(&["incidents", "--output", "json"], &ca);
        json_lines(&out.stdout).into_iter().find(|i| i["fault_ids"].as_array().is_some_and(|f| f.contains(&id.into())))
    })
    .expect("no incident for the fault");
    let out = collector.pikett(&["incident", "escalate", &incident["id"].to_string()], &ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let notfall = |who: &str| sms_to(&sms_a.requests(), who).iter().filter(|r| r.body.contains("[Notfall]")).count();
    let paged = wait_for(Duration::from_secs(10), || (notfall(CAROL) >= 1).then_some(()));
    assert!(paged.is_some(), "the emergency did not page management");

    // The fault is acknowledged already; acknowledging again stops the emergency paging.
    let out = collector.pikett(&["ack", &id.to_string()], &ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(notfall(ALICE), 1, "the emergency paged a second round after the ack");
    let shown = collector.pikett(&["fault", "show", &id.to_string()], &ca);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("acknowledged the emergency paging"));
    // With nothing left paging, a further ack is the same person's retry (answered as done)
    // or someone else's (refused).
    assert!(collector.pikett(&["ack", &id.to_string()], &ca).status.success());
    assert_eq!(collector.pikett_as("someone-else", &["ack", &id.to_string()], &ca).status.code(), Some(1));
}
