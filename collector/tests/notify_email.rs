//! The e-mail channel against a real SMTP server: Debian's aiosmtpd (`apt-get install
//! python3-aiosmtpd`), plaintext on loopback and with STARTTLS and a test CA.

#[path = "notify_support/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{notification, test_pki};
use pikett_collector::notify::{Channel, ChannelKind, EmailChannel, EmailConfig};

/// The interpreter that has aiosmtpd: Debian's python3 (a pyenv python in PATH lacks it).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

struct Smtp {
    child: Child,
    addr: SocketAddr,
    maildir: tempfile::TempDir,
}

impl Smtp {
    /// Starts aiosmtpd on a free loopback port; with `tls` = (cert, key) it requires STARTTLS.
    fn start(tls: Option<(&Path, &Path)>) -> Smtp {
        let addr = common::dead_addr();
        let maildir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(python());
        cmd.env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/notify")).args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &addr.to_string(),
        ]);
        if let Some((cert, key)) = tls {
            cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
        }
        cmd.args(["-c", "pikett_smtp.Recording"])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run python3 -m aiosmtpd");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("aiosmtpd exited ({status}); is python3-aiosmtpd installed?\n{err}");
            }
            assert!(std::time::Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Smtp { child, addr, maildir }
    }

    fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail").join("new");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return vec![];
        };
        entries.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Header value by name, unfolding continuation lines.
fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\n\n").next().unwrap_or_default();
    let mut unfolded: Vec<String> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = unfolded.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            unfolded.push(line.to_string());
        }
    }
    let prefix = format!("{}:", name.to_ascii_lowercase());
    unfolded.iter().find(|l| l.to_ascii_lowercase().starts_with(&prefix)).map(|l| l[prefix.len()..].trim().to_string())
}

fn plaintext_config(addr: SocketAddr) -> EmailConfig {
    let mut cfg = EmailConfig::new(addr.to_string(), "pikett <pikett@example.net>");
    cfg.starttls = false;
    cfg.timeout = Duration::from_secs(5);
    cfg
}

#[tokio::test]
async fn email_reaches_smtp_server_with_recipient_subject_and_message_id() {
    let smtp = Smtp::start(None);
    let email = EmailChannel::new(plaintext_config(smtp.addr)).unwrap();
    let n = notification("F42-primary-alice-email-0", ChannelKind::Email, "alice@example.net");

    let receipt = email.send(&n).await.unwrap();

    assert!(receipt.detail.starts_with("250"), "{receipt:?}");
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(header(m, "X-RcptTo").as_deref(), Some("alice@example.net"));
    assert_eq!(header(m, "X-MailFrom").as_deref(), Some("pikett@example.net"));
    assert_eq!(header(m, "Subject").as_deref(), Some("CRITICAL web1: http/shop-frontend (fault F42)"));
    assert_eq!(header(m, "Message-ID").as_deref(), Some("<pikett.F42-primary-alice-email-0@example.net>"));
    assert!(m.contains("pikett ack F42"), "{m}");
}

#[tokio::test]
async fn retried_email_keeps_its_message_id() {
    let smtp = Smtp::start(None);
    let email = EmailChannel::new(plaintext_config(smtp.addr)).unwrap();
    let n = notification("key-1", ChannelKind::Email, "alice@example.net");
    email.send(&n).await.unwrap();
    email.send(&n).await.unwrap();
    let ids: Vec<_> = smtp.messages().iter().map(|m| header(m, "Message-ID").unwrap()).collect();
    assert_eq!(ids, vec!["<pikett.key-1@example.net>"; 2]);
}

#[tokio::test]
async fn refused_recipient_is_permanent() {
    let smtp = Smtp::start(None);
    let email = EmailChannel::new(plaintext_config(smtp.addr)).unwrap();
    let err = email.send(&notification("n1", ChannelKind::Email, "nobody@example.net")).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("550"), "{err}");
}

#[tokio::test]
async fn transient_smtp_error_is_retryable() {
    let smtp = Smtp::start(None);
    let email = EmailChannel::new(plaintext_config(smtp.addr)).unwrap();
    let err = email.send(&notification("n1", ChannelKind::Email, "busy@example.net")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn smtp_server_down_is_retryable_and_names_it() {
    let addr = common::dead_addr();
    let email = EmailChannel::new(plaintext_config(addr)).unwrap();
    let err = email.send(&notification("n1", ChannelKind::Email, "alice@example.net")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn invalid_recipient_address_is_permanent() {
    let email = EmailChannel::new(plaintext_config(common::dead_addr())).unwrap();
    let err = email.send(&notification("n1", ChannelKind::Email, "not an address")).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("not an address"), "{err}");
}

#[tokio::test]
async fn email_over_starttls_with_a_trusted_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let smtp = Smtp::start(Some((&cert, &key)));
    let mut cfg = EmailConfig::new(smtp.addr.to_string(), "pikett@example.net");
    cfg.ca_file = Some(ca);
    cfg.timeout = Duration::from_secs(5);
    let email = EmailChannel::new(cfg).unwrap();

    email.send(&notification("tls-1", ChannelKind::Email, "alice@example.net")).await.unwrap();

    // The server refuses MAIL before STARTTLS, so a stored message proves TLS was used.
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(header(&msgs[0], "X-RcptTo").as_deref(), Some("alice@example.net"));
}

#[tokio::test]
async fn starttls_with_an_untrusted_certificate_fails() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = test_pki(pki.path());
    let smtp = Smtp::start(Some((&cert, &key)));
    let mut cfg = EmailConfig::new(smtp.addr.to_string(), "pikett@example.net");
    cfg.timeout = Duration::from_secs(5);
    let email = EmailChannel::new(cfg).unwrap();

    let err = email.send(&notification("tls-2", ChannelKind::Email, "alice@example.net")).await.unwrap_err();

    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    assert!(smtp.messages().is_empty());
}
