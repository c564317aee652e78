//! Connections to PostgreSQL: verified TLS through rustls (ring), TCP keepalives, and the
//! session options every pikett connection runs with.
//!
//! Why these settings (see the HA design, "Sessions"): keepalives (idle 2 s, interval 1 s,
//! 2 retries) and `tcp_user_timeout` 3 s notice a dead server or network within seconds;
//! `idle_in_transaction_session_timeout` 2 s is what frees the locks of a collector stopped
//! (SIGSTOP, a VM pause) inside a transaction, which keepalives cannot: the kernel still
//! answers for a stopped process. `statement_timeout` 5 s and `lock_timeout` 2 s bound every
//! statement, so a flush fails instead of hanging.
//!
//! TLS is all or nothing: with a CA the server must present a certificate for the URL's host
//! signed by it (stricter than libpq's `sslmode=require`); without one the URL must say
//! `sslmode=disable` and name a loopback address or a Unix socket (and any `hostaddr=`, where
//! tokio-postgres then connects, a loopback address). `prefer`, which falls back
//! to plain text when the server asks, is never used.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgError;
use crate::store::StoreError;

/// The options of every session (PostgreSQL's `options` connection parameter).
const SESSION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=2s -c statement_timeout=5s -c lock_timeout=2s";

/// How to reach the database: a parsed URL and, for TLS, the verifier of the server.
#[derive(Clone)]
pub struct PgConnect {
    config: Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config's Debug redacts the password.
        f.debug_struct("PgConnect").field("config", &self.config).field("tls", &self.tls.is_some()).finish()
    }
}

impl PgConnect {
    /// `url` is a libpq URL or key=value string (`postgresql://user@host:5432/db`);
    /// `ca_pem` the PEM certificates the server's certificate must chain to. Without them the
    /// URL must say `sslmode=disable` and point at this machine.
    pub fn new(url: &str, ca_pem: Option<&[u8]>) -> Result<PgConnect, PgError> {
        let mut config = Config::from_str(url).map_err(|e| match verify_mode_hint(url) {
            Some(hint) => PgError::Url(hint.into()),
            None => PgError::Url(pikett_support::error_chain(&e)),
        })?;
        if config.get_hosts().is_empty() {
            return Err(PgError::Url(
                "names no host: hostaddr= alone is not enough, give host= too (the name TLS verifies; \
                 hostaddr= is only the address it is reached at)"
                    .into(),
            ));
        }
        let tls = match ca_pem {
            Some(pem) => {
                if config.get_ssl_mode() == SslMode::Disable {
                    return Err(PgError::Url("says sslmode=disable, but a CA for TLS is given".into()));
                }
                if let Some(host) = config.get_hosts().iter().find(|h| matches!(h, Host::Unix(_))) {
                    return Err(PgError::Url(format!(
                        "a CA for TLS is given, but {} is a Unix socket, and PostgreSQL has no TLS on Unix \
                         sockets: name a TCP host, or drop the CA and say sslmode=disable",
                        show_host(host)
                    )));
                }
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(client_config(pem)?))
            }
            None => {
                if config.get_ssl_mode() != SslMode::Disable {
                    return Err(PgError::Url(
                        "without a CA the connection is not verified: give a CA, or say sslmode=disable \
                         for a database on this machine"
                            .into(),
                    ));
                }
                if let Some(host) = config.get_hosts().iter().find(|h| !is_local(h)) {
                    return Err(PgError::Url(format!(
                        "sslmode=disable is only for loopback or a Unix socket, not {}",
                        show_host(host)
                    )));
                }
                // tokio-postgres connects to hostaddr when given, whatever host says (even a
                // Unix socket): the address reached must be loopback too.
                if let Some(addr) = config.get_hostaddrs().iter().find(|a| !a.is_loopback()) {
                    return Err(PgError::Url(format!(
                        "sslmode=disable is only for loopback or a Unix socket, not hostaddr={addr}"
                    )));
                }
                None
            }
        };
        let options = match config.get_options() {
            Some(own) if !own.is_empty() => format!("{SESSION_OPTIONS} {own}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        config
            .options(options)
            .connect_timeout(Duration::from_secs(3))
            .tcp_user_timeout(Duration::from_secs(3))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(2))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(2)
            .application_name("pikett-collector");
        Ok(PgConnect { config, tls })
    }

    /// Sets the password sent to the server (read from a file, never part of the URL). The
    /// `Debug` form keeps redacting it.
    pub fn with_password(mut self, password: &str) -> PgConnect {
        self.config.password(password);
        self
    }

    /// Opens a session; its connection runs as a task of the current runtime until the
    /// [`Client`] is dropped or the server goes away (then the client reports itself closed).
    pub async fn connect(&self) -> Result<Client, PgError> {
        let err = |source| PgError::Db { what: "connecting", source };
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(err)?;
                tokio::spawn(async move { log_end(connection.await) });
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(err)?;
                tokio::spawn(async move { log_end(connection.await) });
                client
            }
        };
        Ok(client)
    }
}

fn log_end(result: Result<(), tokio_postgres::Error>) {
    if let Err(e) = result {
        tracing::warn!("PostgreSQL connection ended: {}", pikett_support::error_chain(&e));
    }
}

/// For a URL tokio-postgres refused: the reason when it asks for libpq's own verification
/// (`sslmode=verify-full`/`verify-ca`, `sslrootcert=`), which tokio-postgres does not parse.
fn verify_mode_hint(url: &str) -> Option<&'static str> {
    let flat: String = url.to_ascii_lowercase().chars().filter(|c| !c.is_whitespace()).collect();
    let asks = flat.contains("sslmode=verify-") || flat.contains("sslmode='verify-") || flat.contains("sslrootcert");
    asks.then_some(
        "sslmode=verify-full, verify-ca and sslrootcert= are not taken: pikett always verifies the server's \
         certificate and name against the configured CA file; say sslmode=require (or nothing) and give the CA \
         file in the configuration",
    )
}

fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| PgError::Tls(format!("the CA file is no PEM certificate list: {e}")))?;
        roots.add(cert).map_err(|e| PgError::Tls(format!("a CA certificate is not usable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PgError::Tls("the CA file holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

fn show_host(host: &Host) -> String {
    match host {
        Host::Unix(path) => path.display().to_string(),
        Host::Tcp(name) => name.clone(),
    }
}

/// One dedicated session, connected on first use: taken out of its slot for each request and
/// put back only after a success, so a failed or cancelled request leaves no session behind
/// and the next request connects anew. The lease and the outbox each hold one.
pub struct Session {
    connect: PgConnect,
    slot: tokio::sync::Mutex<Option<Client>>,
}

impl Session {
    pub fn new(connect: PgConnect) -> Session {
        Session { connect, slot: tokio::sync::Mutex::new(None) }
    }

    /// Runs `f` on the session, connecting when there is none (or it was lost), and keeps the
    /// session only when `f` succeeded.
    pub async fn with<T>(&self, f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut slot = self.slot.lock().await;
        let mut client = match slot.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.connect.connect().await?,
        };
        let out = f(&mut client).await?;
        if !client.is_closed() {
            *slot = Some(client);
        }
        Ok(out)
    }

    /// The server process of the current session, if one is open (tests end it to simulate
    /// a lost link).
    #[cfg(test)]
    pub async fn backend_pid(&self) -> Option<i32> {
        let slot = self.slot.lock().await;
        let client = slot.as_ref()?;
        client.query_one("SELECT pg_backend_pid()", &[]).await.ok().map(|r| r.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_refused_unless_disabled_on_loopback() {
        for url in ["postgresql://db.example/x", "postgresql://127.0.0.1/x", "postgresql://h/x?sslmode=prefer"] {
            let err = PgConnect::new(url, None).expect_err(url).to_string();
            assert!(err.contains("not verified"), "{url}: {err}");
        }
        let err = PgConnect::new("postgresql://db.example/x?sslmode=disable", None).unwrap_err().to_string();
        assert!(err.contains("not db.example"), "{err}");
        // hostaddr is where tokio-postgres connects, whatever host names.
        for url in [
            "postgresql://pikett@localhost/p?sslmode=disable&hostaddr=203.0.113.7",
            "host=/run/postgresql hostaddr=203.0.113.7 sslmode=disable",
            "host=localhost,127.0.0.1 hostaddr=127.0.0.1,203.0.113.7 sslmode=disable",
        ] {
            let err = PgConnect::new(url, None).expect_err(url).to_string();
            assert!(err.contains("not hostaddr=203.0.113.7"), "{url}: {err}");
        }
        PgConnect::new("host=localhost hostaddr=127.0.0.1 sslmode=disable", None).expect("loopback hostaddr");
        for url in ["postgresql://127.0.0.1/x?sslmode=disable", "host=/run/postgresql sslmode=disable"] {
            PgConnect::new(url, None).expect(url);
        }
    }

    #[test]
    fn session_options_are_set_and_own_options_kept() {
        let c = PgConnect::new("host=localhost sslmode=disable options='-c work_mem=8MB'", None).unwrap();
        let options = c.config.get_options().unwrap();
        assert!(options.starts_with(SESSION_OPTIONS) && options.ends_with("-c work_mem=8MB"), "{options}");
        assert_eq!(c.config.get_keepalives_idle(), Duration::from_secs(2));
        assert_eq!(c.config.get_connect_timeout(), Some(&Duration::from_secs(3)));
    }

    #[test]
    fn a_bad_ca_or_url_is_named() {
        let err = PgConnect::new("postgresql://h/x", Some(b"not pem")).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let err = PgConnect::new("postgresql://h/x?sslmode=disable", Some(b"")).unwrap_err().to_string();
        assert!(err.contains("sslmode=disable"), "{err}");
        let err = PgConnect::new("postgresql://h:notaport/x", None).unwrap_err().to_string();
        assert!(err.contains("PostgreSQL URL"), "{err}");
        let err = PgConnect::new("hostaddr=127.0.0.1 sslmode=disable", None).unwrap_err().to_string();
        assert!(err.contains("names no host: hostaddr= alone"), "{err}");
    }

    #[test]
    fn a_password_is_set_and_not_shown() {
        let c = PgConnect::new("host=localhost sslmode=disable", None).unwrap().with_password("s3cret-pw");
        assert_eq!(c.config.get_password(), Some(&b"s3cret-pw"[..]));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }

    #[test]
    fn tls_on_a_unix_socket_is_refused() {
        let err = PgConnect::new("host=/run/postgresql", Some(b"")).unwrap_err().to_string();
        assert!(err.contains("/run/postgresql is a Unix socket") && err.contains("no TLS on Unix sockets"), "{err}");
    }

    #[test]
    fn libpq_verify_modes_point_to_the_ca_file() {
        for url in [
            "postgresql://db.example/x?sslmode=verify-full",
            "postgresql://db.example/x?sslmode=verify-ca",
            "host=db.example sslmode = verify-full",
            "postgresql://db.example/x?sslrootcert=/etc/ca.pem",
        ] {
            let err = PgConnect::new(url, None).expect_err(url).to_string();
            assert!(err.contains("always verifies") && err.contains("sslmode=require"), "{url}: {err}");
        }
    }
}
