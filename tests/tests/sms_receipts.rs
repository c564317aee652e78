//! SMS delivery receipts end to end: the real collector and agent, a local HTTP server
//! standing in for an SMS gateway that answers a message id and a status URL, the harness's
//! receiver standing in for the voice gateway. An SMS the gateway accepts but never confirms
//! counts as failed after `delivery_timeout` (the voice call follows); one confirmed by
//! callback or by the status URL does not.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pikett_tests::*;

const ALICE: &str = "+4915100000001";
const SECRET: &str = "receipt-secret-0123456789abcdef";

/// One SMS the stand-in gateway accepted.
#[derive(Debug, Clone)]
struct Sent {
    at: SystemTime,
    idempotency_key: String,
    body: String,
}

/// An SMS gateway stand-in: `POST /send` answers `{"messageId": "gw-N"}`; `GET /status/ID`
/// answers `{"status": S}` with the status the test sets, and is recorded. With
/// `receipt_first` set, a send is confirmed by a `DELIVRD` receipt posted to the collector
/// (its answer recorded in `early_answers`) before the send is answered, as a fast gateway
/// may do.
struct Gateway {
    port: u16,
    sent: Arc<Mutex<Vec<Sent>>>,
    status_requests: Arc<Mutex<Vec<String>>>,
    receipt_first: Arc<std::sync::atomic::AtomicBool>,
    collector_port: Arc<Mutex<Option<u16>>>,
    early_answers: Arc<Mutex<Vec<Option<u16>>>>,
}

impl Gateway {
    fn start(status: &'static str) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gateway");
        let port = listener.local_addr().expect("addr").port();
        let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let status_requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let receipt_first: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let collector_port: Arc<Mutex<Option<u16>>> = Arc::default();
        let early_answers: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
        let (sent2, polls2) = (sent.clone(), status_requests.clone());
        let (first2, port2, early2) = (receipt_first.clone(), collector_port.clone(), early_answers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (sent, polls) = (sent2.clone(), polls2.clone());
                let (first, port, early) = (first2.clone(), port2.clone(), early2.clone());
                std::thread::spawn(move || {
                    let Some(HttpRequest { method, path, headers, body }) = read_http_request(&stream) else { return };
                    let port = *port.lock().expect("lock");
                    if method == "POST" && path == "/send" && first.load(std::sync::atomic::Ordering::SeqCst) {
                        let key = headers.get("idempotency-key").cloned().unwrap_or_default();
                        let receipt = format!(r#"{{"id": "{key}", "status": "DELIVRD"}}"#);
                        let bearer = format!("Authorization: Bearer {SECRET}\r\n");
                        let answer = port
                            .and_then(|p| http_post(p, "/receipts/sms/gw-a", &bearer, "application/json", &receipt));
                        early.lock().expect("lock").push(answer);
                    }
                    let answer = if method == "POST" && path == "/send" {
                        let mut sent = sent.lock().expect("lock");
                        sent.push(Sent {
                            at: SystemTime::now(),
                            idempotency_key: headers.get("idempotency-key").cloned().unwrap_or_default(),
                            body,
                        });
                        Some(format!("{{\"messageId\": \"gw-{}\"}}", sent.len()))
                    } else if method == "GET" && path.starts_with("/status/") {
                        polls.lock().expect("lock").push(path);
                        Some(format!("{{\"status\": \"{status}\"}}"))
                    } else {
                        None
                    };
                    let _ = match answer {
                        Some(json) => write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                            json.len()
                        ),
                        None => {
                            write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        }
                    };
                });
            }
        });
        Gateway { port, sent, status_requests, receipt_first, collector_port, early_answers }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/send", self.port)
    }

    fn sent_to(&self, number: &str) -> Vec<Sent> {
        self.sent.lock().expect("lock").iter().filter(|s| s.body.contains(number)).cloned().collect()
    }
}

/// A POST to the collector's HTTP port; its status code.
fn http_post(port: u16, path: &str, extra_headers: &str, content_type: &str, body: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // A refused oversized body may be answered before it is all written: read regardless.
    let _ = write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

fn write_secret(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("receipt.secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
    path.display().to_string()
}

/// alice is primary: SMS at once, voice after 10 minutes (far beyond every test), so a voice
/// call within a test is the failover of an SMS that counted as failed.
fn collector_extra(gateway: &Gateway, voice: &Receiver, delivery_timeout: &str, receipts: &str) -> String {
    format!(
        r#"
[faults]
for = 1

[people.alice]
sms = "{ALICE}"
phone = "{ALICE}"
rules = [ {{ channel = "sms", after = "0s" }}, {{ channel = "voice", after = "10m" }} ]

[[rotations]]
role = "primary"
members = ["alice"]
start = "2026-01-05T09:00:00"
period = "1w"
timezone = "Europe/Berlin"

[escalation]
ack_timeout = "10m"
repeat = 0
warning_channel = "sms"

[channels.sms]
gateways = ["{gateway}"]

[channels.sms.receipts.gw-a]
gateway = "{gateway}"
delivery_timeout = "{delivery_timeout}"
status_field = "/status"
delivered = ["delivered", "DELIVRD"]
failed = ["failed", "undeliverable"]
{receipts}

[channels.voice]
url = "{voice}"
"#,
        gateway = gateway.url(),
        voice = voice.url(),
    )
}

struct Scenario {
    /// Kept for the scenario's life (configs, secret, logs).
    _dir: tempfile::TempDir,
    ca: String,
    collector: CollectorSetup,
    _collector: Proc,
    _agent: Proc,
    fault_id: String,
    page: Sent,
}

/// Starts collector and agent, fails the check, waits for alice's SMS.
fn page_alice(
    host: &str,
    gateway: &Gateway,
    voice: &Receiver,
    delivery_timeout: &str,
    receipts: impl FnOnce(&Path) -> String,
) -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let receipts = receipts(dir.path());
    let collector =
        CollectorSetup::new(dir.path(), &pki, &collector_extra(gateway, voice, delivery_timeout, &receipts));
    *gateway.collector_port.lock().unwrap() = Some(collector.http_port);
    let c = collector.start();
    let check = ControlledCheck::new(dir.path());
    let cfg = agent_config(dir.path(), &pki, host, &collector.url(), &check.toml());
    let agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    check.set(2);
    let fault = wait_for(Duration::from_secs(20), || find_fault(&collector, &ca, host, "command/ctl", "open"))
        .expect("no fault opened");
    let fault_id = fault["id"].as_u64().unwrap().to_string();
    let page = wait_for(Duration::from_secs(10), || gateway.sent_to(ALICE).first().cloned())
        .expect("alice was not paged by SMS");
    Scenario { _dir: dir, ca, collector, _collector: c, _agent: agent, fault_id, page }
}

fn fault_show(s: &Scenario) -> serde_json::Value {
    let out = s.collector.pikett(&["fault", "show", &s.fault_id, "--output", "json"], &s.ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout).pop().expect("fault show printed nothing")
}

/// The `delivery` of the fault's first SMS notification, once it is `want`.
fn wait_for_delivery(s: &Scenario, want: &str) -> Option<serde_json::Value> {
    wait_for(Duration::from_secs(15), || {
        let f = fault_show(s);
        let sms = f["notifications"].as_array()?.iter().find(|n| n["channel"] == "sms")?.clone();
        (sms["delivery"] == want).then_some(f)
    })
}

fn timeline_text(f: &serde_json::Value) -> String {
    f["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["text"].as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

fn ms_between(a: SystemTime, b: SystemTime) -> i128 {
    let ms = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i128;
    ms(b) - ms(a)
}

#[test]
fn an_sms_never_confirmed_counts_as_failed_after_delivery_timeout_and_voice_follows() {
    let (gateway, voice) = (Gateway::start("queued"), Receiver::start(200));
    let s = page_alice("web-11", &gateway, &voice, "2s", |dir| {
        format!("callback_secret_file = \"{}\"\nreceipt_id_field = \"/id\"\n", write_secret(dir))
    });
    let call = wait_for(Duration::from_secs(15), || voice.requests().into_iter().find(|r| r.body.contains(ALICE)))
        .expect("no voice call after the SMS went unconfirmed");
    let waited = ms_between(s.page.at, call.at);
    assert!(waited >= 1900, "voice called {waited} ms after the SMS: before delivery_timeout (2s)");
    assert!(waited < 10_000, "voice called only {waited} ms after the SMS");
    assert_ne!(call.headers["idempotency-key"], s.page.idempotency_key, "the voice call is its own notification");
    assert_eq!(gateway.sent_to(ALICE).len(), 1, "the SMS was not sent again");

    let f = wait_for_delivery(&s, "not delivered").expect("fault show never said the SMS was not delivered");
    let text = timeline_text(&f);
    assert!(text.contains(&format!("SMS to alice ({ALICE}) not delivered within 2s")), "{text}");
    assert!(text.contains("awaiting its delivery receipt"), "{text}");
    let human =
        String::from_utf8_lossy(&s.collector.pikett(&["fault", "show", &s.fault_id], &s.ca).stdout).into_owned();
    assert!(human.contains("notifications:") && human.contains("not delivered"), "{human}");
}

#[test]
fn an_sms_confirmed_by_callback_is_delivered_and_voice_is_not_called() {
    let (gateway, voice) = (Gateway::start("queued"), Receiver::start(200));
    let s = page_alice("web-12", &gateway, &voice, "5s", |dir| {
        format!("callback_secret_file = \"{}\"\nreceipt_id_field = \"/id\"\n", write_secret(dir))
    });
    let port = s.collector.http_port;
    // The gateway answered; the collector tracks the SMS once it has the answer.
    assert!(wait_for_delivery(&s, "sent").is_some(), "the SMS never showed as sent, awaiting its receipt");
    // No message_id_field: the receipt names the message by our id, the Idempotency-Key.
    let receipt = format!(r#"{{"id": "{}", "status": "DELIVRD"}}"#, s.page.idempotency_key);
    let json = "application/json";
    assert_eq!(http_post(port, &format!("/receipts/sms/gw-a/{SECRET}x"), "", json, &receipt), Some(401));
    assert_eq!(http_post(port, "/receipts/sms/gw-a", "Authorization: Bearer wrong\r\n", json, &receipt), Some(401));
    assert_eq!(http_post(port, &format!("/receipts/sms/gw-b/{SECRET}"), "", json, &receipt), Some(404));
    let huge = format!(r#"{{"id": "{}", "pad": "{}"}}"#, s.page.idempotency_key, "x".repeat(100 * 1024));
    assert_eq!(http_post(port, &format!("/receipts/sms/gw-a/{SECRET}"), "", json, &huge), Some(413));
    // Not final: the SMS is still awaited.
    let queued = format!(r#"{{"id": "{}", "status": "buffered"}}"#, s.page.idempotency_key);
    assert_eq!(http_post(port, &format!("/receipts/sms/gw-a/{SECRET}"), "", json, &queued), Some(200));
    let bearer = format!("Authorization: Bearer {SECRET}\r\n");
    assert_eq!(http_post(port, "/receipts/sms/gw-a", &bearer, json, &receipt), Some(200));

    let f = wait_for_delivery(&s, "delivered").expect("fault show never said the SMS was delivered");
    assert!(timeline_text(&f).contains(&format!("SMS to alice ({ALICE}) delivered ")), "{}", timeline_text(&f));
    // Past delivery_timeout (5s from the SMS): no voice call.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(s.page.at.elapsed().unwrap_or_default()));
    assert!(voice.requests().is_empty(), "voice was called although the SMS was delivered");
    let f = fault_show(&s);
    assert_eq!(f["notifications"][0]["delivery"], "delivered", "{f}");
    assert!(!timeline_text(&f).contains("not delivered"), "{}", timeline_text(&f));
    let human =
        String::from_utf8_lossy(&s.collector.pikett(&["fault", "show", &s.fault_id], &s.ca).stdout).into_owned();
    let line = human.lines().find(|l| l.contains(&s.page.idempotency_key)).unwrap_or_default();
    assert!(line.contains(" delivered "), "{human}");
    // The refused receipts are counted, and the secret (in the path of one of them, a wrong
    // one in another) is in no log line.
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics");
    assert!(metrics.lines().any(|l| l == "pikett_sms_receipts_refused_total 2"), "{metrics}");
    let log = std::fs::read_to_string(&s.collector.log).unwrap_or_default();
    assert!(log.contains("delivery receipts refused"), "the refusal was not logged:\n{log}");
    assert!(!log.contains(SECRET), "the receipt secret is in the collector's log:\n{log}");
    assert!(!log.contains("0123456789abcdef"), "part of the receipt secret is in the collector's log:\n{log}");
}

#[test]
fn a_receipt_posted_before_the_gateway_answers_the_send_is_not_lost() {
    let (gateway, voice) = (Gateway::start("queued"), Receiver::start(200));
    gateway.receipt_first.store(true, std::sync::atomic::Ordering::SeqCst);
    let s = page_alice("web-14", &gateway, &voice, "3s", |dir| {
        format!("callback_secret_file = \"{}\"\nreceipt_id_field = \"/id\"\n", write_secret(dir))
    });
    // The gateway confirmed the SMS before it answered the send: the collector took it.
    assert_eq!(gateway.early_answers.lock().unwrap().first().copied(), Some(Some(200)));
    let f = wait_for_delivery(&s, "delivered").expect("the receipt that came before the send's answer was lost");
    assert!(timeline_text(&f).contains(&format!("SMS to alice ({ALICE}) delivered ")), "{}", timeline_text(&f));
    // Past delivery_timeout (3s from the SMS): no voice call.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(s.page.at.elapsed().unwrap_or_default()));
    assert!(voice.requests().is_empty(), "voice was called although the SMS was delivered");
    let f = fault_show(&s);
    assert_eq!(f["notifications"][0]["delivery"], "delivered", "{f}");
    assert!(!timeline_text(&f).contains("not delivered"), "{}", timeline_text(&f));
    assert_eq!(gateway.sent_to(ALICE).len(), 1, "the SMS was sent again");
}

#[test]
fn an_sms_confirmed_by_the_status_url_is_delivered_and_voice_is_not_called() {
    let (gateway, voice) = (Gateway::start("delivered"), Receiver::start(200));
    let status_url = format!("http://127.0.0.1:{}/status/{{{{message_id}}}}", gateway.port);
    let s = page_alice("web-13", &gateway, &voice, "5s", |_| {
        format!("message_id_field = \"/messageId\"\nstatus_url = \"{status_url}\"\npoll_interval = \"500ms\"\n")
    });
    let f = wait_for_delivery(&s, "delivered").expect("fault show never said the SMS was delivered");
    assert!(timeline_text(&f).contains("SMS to alice"), "{}", timeline_text(&f));
    // The status URL was asked with the message id from the send answer.
    let polls = gateway.status_requests.lock().unwrap().clone();
    assert_eq!(polls.first().map(String::as_str), Some("/status/gw-1"), "{polls:?}");
    std::thread::sleep(Duration::from_secs(7).saturating_sub(s.page.at.elapsed().unwrap_or_default()));
    assert!(voice.requests().is_empty(), "voice was called although the SMS was delivered");
    assert_eq!(polls.len(), gateway.status_requests.lock().unwrap().len(), "polling went on after delivery");
}
