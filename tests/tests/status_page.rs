//! The customer status page in a real browser: a running collector with real agents of two
//! customers, links made and revoked with the CLI, and headless Chromium (Debian's
//! `chromium`) loading the pages. Acme's page shows its host, its incident with the status
//! update (escaped) and ETA, its maintenance and availability, and nothing of globex; globex's
//! only globex's. A wrong or revoked secret gets the very 404 of any unknown path, whatever
//! the method and however long the path; so does a valid secret with another method than GET
//! or HEAD. Links survive a restart; the secret is shown once and is nowhere in the list, the
//! audit log or the collector's log at `RUST_LOG=debug`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pikett_tests::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium with its own profile and HOME in a temporary directory.
struct Browser {
    profile: tempfile::TempDir,
}

impl Browser {
    fn new() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: this test needs Debian's chromium (apt-get install chromium)"
        );
        Browser { profile: tempfile::tempdir().expect("browser profile dir") }
    }

    /// Runs Chromium headless on `url` with `mode` (`--dump-dom` or `--screenshot=FILE`);
    /// returns its stdout. Killed after a minute.
    fn run(&self, mode: &str, url: &str) -> String {
        let mut child = Command::new(CHROMIUM)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1200,900"])
            .arg(format!("--user-data-dir={}", self.profile.path().join("profile").display()))
            .arg(mode)
            .arg(url)
            .env("HOME", self.profile.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().expect("waiting for chromium").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {mode} {url} did not finish within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        reader.join().expect("chromium output")
    }

    fn dom(&self, url: &str) -> String {
        self.run("--dump-dom", url)
    }

    fn screenshot(&self, url: &str, file: &Path) {
        self.run(&format!("--screenshot={}", file.display()), url);
    }
}

/// The whole HTTP/1.1 response to `GET path` (status line, headers, body), with the `date`
/// header taken out so two answers can be compared.
fn raw_get(port: u16, path: &str) -> String {
    raw(port, "GET", path)
}

/// [`raw_get`] with another method (a POST with an empty body).
fn raw(port: u16, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let length = if method == "POST" { "Content-Length: 0\r\n" } else { "" };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{length}Connection: close\r\n\r\n")
        .expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    text.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("date:")).collect::<Vec<_>>().join("\r\n")
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

/// An agent of `customer` for `host` with its own controlled check.
fn agent(dir: &Path, pki: &Pki, collector: &CollectorSetup, host: &str, customer: &str) -> (Proc, ControlledCheck) {
    let sub: PathBuf = dir.join(host);
    std::fs::create_dir_all(&sub).expect("agent dir");
    let check = ControlledCheck::new(&sub);
    let cfg = agent_config(dir, pki, host, &collector.url(), &check.toml());
    let text = std::fs::read_to_string(&cfg).expect("agent config");
    std::fs::write(&cfg, text.replacen("customer = \"acme\"", &format!("customer = \"{customer}\""), 1))
        .expect("agent config");
    (spawn("pikett-agent", &cfg, &["run"], &dir.join(format!("{host}.log"))), check)
}

const CONFIG: &str = r#"
[faults]
for = 1

[customers.acme]
sla = "standard"

[customers.globex]
sla = "standard"

[sla.standard]
timezone = "UTC"
windows = [ { name = "all", from = "00:00", to = "24:00", days = "mon-sun", target = "99.5%" } ]
checks = ["command/ctl"]
"#;

#[test]
fn status_pages_show_one_customer_each_in_a_browser_and_wrong_or_revoked_links_show_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, CONFIG);
    // At debug, so that the check at the end covers every line that might carry a path.
    let debug = [("RUST_LOG", "debug")];
    let mut c = collector.start_env(&debug);
    let pikett = |args: &[&str]| collector.pikett(args, &ca);
    let browser = Browser::new();
    let page_url = |path: &str| format!("http://127.0.0.1:{}{path}", collector.http_port);

    let (_acme_agent, acme_check) = agent(dir.path(), &pki, &collector, "web-1", "acme");
    let (_globex_agent, _globex_check) = agent(dir.path(), &pki, &collector, "globex-db", "globex");
    wait_for(Duration::from_secs(30), || {
        let hosts = json_lines(&pikett(&["hosts", "--output", "json"]).stdout);
        let has = |h: &str, cust: &str| hosts.iter().any(|x| x["host_id"] == h && x["customer"] == cust);
        (has("web-1", "acme") && has("globex-db", "globex")).then_some(())
    })
    .unwrap_or_else(|| panic!("the agents never reported; collector log:\n{}", c.log_text()));

    // A customer nobody knows is refused (a typo), unless forced.
    let out = pikett(&["status-page", "create", "acne"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"acne\"") && err.contains("pikett hosts") && err.contains("--force"), "{err}");
    let forced = one_json_line(&pikett(&["status-page", "create", "initech", "--force", "--output", "json"]));
    assert_eq!(forced["customer"], "initech");

    // The links: the path carries the secret, shown once.
    let acme = one_json_line(&pikett(&["status-page", "create", "acme", "--output", "json"]));
    let globex_text = success_stdout(&pikett(&["status-page", "create", "globex"]));
    let acme_path = acme["path"].as_str().expect("path").to_string();
    let globex_path =
        globex_text.lines().find(|l| l.starts_with("/status/")).expect("the path on a line of its own").to_string();
    let secret = |path: &str| path.strip_prefix("/status/").expect("/status/ path").to_string();
    let (acme_secret, globex_secret) = (secret(&acme_path), secret(&globex_path));
    assert_eq!(acme_secret.len(), 43, "{acme_path}");
    assert!(acme_secret.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'), "{acme_path}");
    assert_ne!(acme_secret, globex_secret);

    // List: id, customer, created, by whom; never a secret.
    let listed = json_lines(success_stdout(&pikett(&["status-page", "list", "--output", "json"])).as_bytes());
    assert_eq!(listed.len(), 3, "{listed:?}");
    let acme_listed = listed.iter().find(|p| p["id"] == acme["id"]).expect("acme's link listed");
    assert_eq!(acme_listed["customer"], "acme");
    assert!(acme_listed["created_by"].as_str().is_some_and(|w| w.ends_with("@local")), "{acme_listed}");
    assert!(acme_listed["created"].is_string() && acme_listed.get("path").is_none(), "{acme_listed}");
    let table = success_stdout(&pikett(&["status-page", "list"]));
    assert!(table.starts_with("  ID CUSTOMER") && table.contains("globex") && table.contains("initech"), "{table}");
    for text in [&table, &serde_json::to_string(&listed).unwrap()] {
        assert!(!text.contains(&acme_secret) && !text.contains(&globex_secret), "a secret is listed: {text}");
    }

    // An acme incident with a status update (user text with markup) and an ETA, and a
    // planned maintenance window.
    acme_check.set(2);
    let incident = wait_for(Duration::from_secs(30), || {
        json_lines(&pikett(&["incidents", "--output", "json"]).stdout).into_iter().find(|i| i["customer"] == "acme")
    })
    .unwrap_or_else(|| panic!("no acme incident; collector log:\n{}", c.log_text()));
    let id = incident["id"].to_string();
    let text = "Disk <b>replaced</b> & RAID rebuilding";
    success_stdout(&pikett(&["incident", "update", &id, "--text", text, "--eta", "2030-01-01T12:00:00Z"]));
    let window = ["--start", "2099-01-01T00:00:00Z", "--end", "2099-01-01T02:00:00Z", "--reason", "Kernel update"];
    success_stdout(&pikett(&[&["maintenance", "add", "--host", "web-1"][..], &window[..]].concat()));

    // Acme's page in the browser (the first view of it: built now, not cached).
    let fault = find_fault(&collector, &ca, "web-1", "command/ctl", "open").expect("web-1's open fault");
    let opened_ms = fault["opened_unix_ms"].as_i64().expect("opened_unix_ms");
    let before = jiff::Timestamp::now();
    let dom = browser.dom(&page_url(&acme_path));
    let after = jiff::Timestamp::now();
    assert!(dom.contains("acme — service status"), "{dom}");
    assert!(dom.contains("<tr><td>web-1</td><td><span class=\"badge down\">Down</span>"), "{dom}");
    assert!(dom.contains("command/ctl <span class=\"badge down\">Down</span>"), "{dom}");
    assert!(dom.contains("Expected resolution (ETA): 2030-01-01 12:00 UTC"), "{dom}");
    // The update's markup is text, not elements.
    assert!(dom.contains("Disk &lt;b&gt;replaced&lt;/b&gt; &amp; RAID rebuilding"), "{dom}");
    assert!(!dom.contains("<b>"), "{dom}");
    assert!(dom.contains("Kernel update") && dom.contains("2099-01-01 00:00 UTC"), "{dom}");
    assert!(dom.contains("Availability this month") && dom.contains("so far"), "{dom}");
    // web-1 is down since its fault opened, of the service time since the month began (the
    // window is all day, UTC): between what that is at `before` and at `after`, as shown
    // (three decimals), next to the target.
    let row = "<tr><td>web-1</td><td>all</td><td>";
    let shown: f64 = dom
        .split_once(row)
        .and_then(|(_, rest)| rest.split_once("&nbsp;%</td><td>99.500&nbsp;%</td>"))
        .and_then(|(value, _)| value.parse().ok())
        .unwrap_or_else(|| panic!("no availability row for web-1 with the target: {dom}"));
    let month_start = before.to_zoned(jiff::tz::TimeZone::UTC).first_of_month().expect("first of month");
    let month_start = month_start.start_of_day().expect("midnight").timestamp().as_second();
    let percent_at = |now: i64| {
        let (down, so_far) = ((now - opened_ms.div_euclid(1000)).max(0), now - month_start);
        100.0 * (1.0 - down as f64 / so_far as f64)
    };
    let (low, high) = (percent_at(after.as_second() + 1), percent_at(before.as_second()));
    assert!(
        shown >= low - 0.0005 && shown <= high + 0.0005,
        "web-1's availability {shown} % is not the share of this month's service time so far \
         ({low:.5} … {high:.5} %): {dom}"
    );
    assert!(dom.contains("Some services are down"), "{dom}");
    assert!(!dom.contains("globex"), "globex on acme's page: {dom}");

    let png = dir.path().join("acme.png");
    browser.screenshot(&page_url(&acme_path), &png);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot {}: {e}", png.display()));
    assert_eq!(png_size(&bytes), Some((1200, 900)), "not a 1200x900 PNG");
    assert!(bytes.len() > 10_000, "a blank screenshot? {} bytes", bytes.len());

    // The page's headers: never cached, indexed or followed, loading nothing.
    let response = raw_get(collector.http_port, &acme_path);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    assert_eq!(header(&response, "referrer-policy"), Some("no-referrer"));
    assert!(header(&response, "x-robots-tag").is_some_and(|v| v.starts_with("noindex")), "{response}");
    let csp = header(&response, "content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'; style-src 'unsafe-inline'"), "{csp}");
    assert!(header(&response, "content-type").is_some_and(|v| v.starts_with("text/html")), "{response}");

    // Globex's page: only globex's host.
    let dom = browser.dom(&page_url(&globex_path));
    assert!(dom.contains("globex — service status") && dom.contains("<td>globex-db</td>"), "{dom}");
    assert!(dom.contains("All systems operational") && dom.contains("No open incidents."), "{dom}");
    for other in ["web-1", "acme", "Disk", "Kernel update", "2030-01-01"] {
        assert!(!dom.contains(other), "{other} on globex's page: {dom}");
    }

    // A wrong secret: the very answer of a path that does not exist, and nothing in the browser.
    let unknown = raw_get(collector.http_port, "/no-such-page");
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    let mut wrong_secret = acme_secret.clone();
    wrong_secret.replace_range(..4, if acme_secret.starts_with("AAAA") { "BBBB" } else { "AAAA" });
    for path in [format!("/status/{wrong_secret}"), "/status/x".to_string(), "/status/%FF".to_string()] {
        assert_eq!(raw_get(collector.http_port, &path), unknown, "{path} answers unlike an unknown path");
    }
    // Other methods: a wrong secret, and a valid one, answer as an unknown path does.
    for method in ["POST", "HEAD", "PUT", "DELETE"] {
        let unknown = raw(collector.http_port, method, "/no-such-page");
        assert!(unknown.starts_with("HTTP/1.1 404"), "{method}: {unknown}");
        for path in [&acme_path, &format!("/status/{wrong_secret}")] {
            let answer = raw(collector.http_port, method, path);
            if method == "HEAD" && path == &acme_path {
                assert!(answer.starts_with("HTTP/1.1 200"), "HEAD of a valid link: {answer}");
                assert!(!answer.contains("service status"), "HEAD with a body: {answer}");
            } else {
                assert_eq!(answer, unknown, "{method} {path} answers unlike an unknown path");
            }
        }
    }
    // A very long path: the same 404 as an unknown path as long, and the collector serves on.
    let long = format!("/status/{}", "A".repeat(60_000));
    let long_unknown = format!("/{}", "A".repeat(60_007));
    let answer = raw_get(collector.http_port, &long);
    assert!(answer.starts_with("HTTP/1.1 4"), "{}", &answer[..answer.len().min(200)]);
    assert_eq!(answer, raw_get(collector.http_port, &long_unknown), "a long /status/ path answers differently");
    assert!(raw_get(collector.http_port, &acme_path).starts_with("HTTP/1.1 200"), "the page is gone");
    let dom = browser.dom(&page_url(&format!("/status/{wrong_secret}")));
    for name in ["web-1", "globex-db", "service status"] {
        assert!(!dom.contains(name), "{name} shown for a wrong secret: {dom}");
    }

    // Revoked: acme's link is gone; globex's still works, also after a restart.
    let revoked = one_json_line(&pikett(&["status-page", "revoke", &acme["id"].to_string(), "--output", "json"]));
    assert_eq!(revoked["customer"], "acme");
    assert_eq!(raw_get(collector.http_port, &acme_path), unknown, "a revoked link still answers");
    let dom = browser.dom(&page_url(&acme_path));
    assert!(!dom.contains("web-1") && !dom.contains("globex-db"), "a revoked link shows: {dom}");
    let out = pikett(&["status-page", "revoke", &acme["id"].to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no status page link with id"), "{out:?}");

    assert_eq!(c.sigterm(Duration::from_secs(20)), Some(0), "collector did not stop cleanly:\n{}", c.log_text());
    let c = collector.start_env(&debug);
    let dom = browser.dom(&page_url(&globex_path));
    assert!(dom.contains("<td>globex-db</td>"), "globex's link lost in the restart: {dom}");
    assert_eq!(raw_get(collector.http_port, &acme_path), unknown, "the revoked link came back");

    // The audit log has the changes, never a secret; neither has the collector's log (both
    // runs, at debug).
    let audit = success_stdout(&pikett(&["audit", "--output", "json"]));
    assert!(audit.contains("\"create_status_page\"") && audit.contains("\"revoke_status_page\""), "{audit}");
    let log = c.log_text();
    assert!(log.contains("DEBUG"), "the collector did not log at debug: {log}");
    for text in [&audit, &log] {
        assert!(!text.contains(&acme_secret) && !text.contains(&globex_secret), "a secret leaked: {text}");
    }
}
