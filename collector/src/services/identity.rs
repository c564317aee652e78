//! Who a host is: its enrollment (customer, the certificates issued to it, revocation)
//! and the enrollment tickets already used.
//!
//! Trees: `identities` (host id → JSON [`Identity`]), `tickets_used` (nonce → JSON
//! [`UsedTicket`]). Mirrored in memory: every agent stream is checked against it. On a
//! PostgreSQL cluster each collector holds its own copy of both trees: it refreshes them
//! (`PgStorage::refresh_tree`) and then [`IdentityService::reload`]s the mirror, so a
//! revocation or a used ticket recorded on one collector reaches the others.
//!
//! A host with an identity is accepted only with a certificate issued to it and not
//! revoked, and its customer is the identity's, whatever the agent says. A host without
//! one (certificates made by hand, before enrollment existed) is accepted on its
//! certificate alone, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::services::pki::{Signed, Ticket};
use crate::store::{Storage, StoreError, Tree};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("identity record {host}: {source}")]
    Corrupt { host: String, source: serde_json::Error },
    #[error("this ticket was already used (by host {host} at {at}); ask for a new one")]
    TicketUsed { host: String, at: String },
    #[error("host {0} is not enrolled")]
    NotEnrolled(String),
    #[error("host {0} was revoked; enroll it again with a new ticket")]
    Revoked(String),
}

/// One certificate issued to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub serial: String,
    pub not_after_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub customer: String,
    pub enrolled_ms: i64,
    /// Certificates accepted for the host: the newest and, after a renewal, the one before
    /// it until it expires.
    pub certificates: Vec<IssuedCert>,
    pub revoked_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsedTicket {
    pub host: String,
    pub used_ms: i64,
}

/// What the collector makes of an agent's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertVerdict {
    /// No enrollment on record: the certificate alone identifies the host.
    Unenrolled,
    Accepted {
        customer: String,
    },
    Refused(String),
}

pub struct IdentityService {
    storage: Arc<dyn Storage>,
    identities: Arc<dyn Tree>,
    used: Arc<dyn Tree>,
    known: RwLock<HashMap<String, Identity>>,
    /// Serialises ticket use (check and record must not interleave).
    writing: Mutex<()>,
}

/// Every identity of the tree, by host.
fn read_identities(tree: &dyn Tree) -> Result<HashMap<String, Identity>, IdentityError> {
    let mut known = HashMap::new();
    for item in tree.iter() {
        let (k, v) = item?;
        let host = String::from_utf8_lossy(&k).into_owned();
        let id: Identity =
            serde_json::from_slice(&v).map_err(|source| IdentityError::Corrupt { host: host.clone(), source })?;
        known.insert(host, id);
    }
    Ok(known)
}

fn at(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

impl IdentityService {
    pub fn open(storage: Arc<dyn Storage>) -> Result<IdentityService, IdentityError> {
        let identities = storage.tree("identities")?;
        let used = storage.tree("tickets_used")?;
        let known = read_identities(&*identities)?;
        Ok(IdentityService { storage, identities, used, known: RwLock::new(known), writing: Mutex::new(()) })
    }

    /// Re-reads the `identities` tree into the in-memory mirror that [`Self::check`] answers
    /// from. On PostgreSQL, call it after `PgStorage::refresh_tree("identities")`, so a
    /// revocation or an enrollment made on another collector takes effect here. A corrupt
    /// record fails the reload and leaves the mirror as it was.
    pub fn reload(&self) -> Result<(), IdentityError> {
        // Under the write lock: an enroll, renew or revoke writes the tree and the mirror
        // together, so a reload cannot read the tree before such a write and then replace
        // the mirror after it (losing the write from the mirror).
        let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let known = read_identities(&*self.identities)?;
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = known;
        Ok(())
    }

    fn put(&self, host: &str, id: &Identity) -> Result<(), IdentityError> {
        self.identities.insert(host.as_bytes(), serde_json::to_vec(id).expect("an identity serializes"))?;
        Ok(())
    }

    /// Records a ticket's use and the certificate signed for it (durably). A used ticket
    /// is refused.
    pub async fn enroll(&self, ticket: &Ticket, signed: &Signed, now_ms: i64) -> Result<Identity, IdentityError> {
        let identity = {
            let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = self.used.get(ticket.nonce.as_bytes())? {
                let used: UsedTicket = serde_json::from_slice(&v)
                    .map_err(|source| IdentityError::Corrupt { host: ticket.host.clone(), source })?;
                return Err(IdentityError::TicketUsed { host: used.host, at: at(used.used_ms) });
            }
            let record = UsedTicket { host: ticket.host.clone(), used_ms: now_ms };
            self.used.insert(ticket.nonce.as_bytes(), serde_json::to_vec(&record).expect("serializes"))?;
            let identity = Identity {
                customer: ticket.customer.clone(),
                enrolled_ms: now_ms,
                certificates: vec![IssuedCert { serial: signed.serial.clone(), not_after_ms: signed.not_after_ms }],
                revoked_ms: None,
            };
            self.put(&ticket.host, &identity)?;
            self.known.write().unwrap_or_else(|p| p.into_inner()).insert(ticket.host.clone(), identity.clone());
            identity
        };
        self.storage.flush().await?;
        Ok(identity)
    }

    /// Adds a renewed certificate for the holder of `presented` (checked again here, under
    /// the lock, so a revocation or a new enrollment in between wins). Only the presented
    /// certificate and the new one stay accepted.
    pub async fn renew(
        &self,
        host: &str,
        presented: &str,
        signed: &Signed,
        now_ms: i64,
    ) -> Result<Identity, IdentityError> {
        let identity = {
            let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            let mut id = self.identity(host).ok_or_else(|| IdentityError::NotEnrolled(host.to_string()))?;
            if id.revoked_ms.is_some() {
                return Err(IdentityError::Revoked(host.to_string()));
            }
            if !id.certificates.iter().any(|c| c.serial == presented && c.not_after_ms > now_ms) {
                return Err(IdentityError::Revoked(host.to_string()));
            }
            id.certificates.retain(|c| c.serial == presented);
            id.certificates.push(IssuedCert { serial: signed.serial.clone(), not_after_ms: signed.not_after_ms });
            self.put(host, &id)?;
            self.known.write().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), id.clone());
            id
        };
        self.storage.flush().await?;
        Ok(identity)
    }

    /// Refuses every certificate of `host` from now on; returns how many were accepted.
    /// A host never enrolled gets a revoked identity too (its hand-made certificate is
    /// refused as well).
    pub async fn revoke(&self, host: &str, customer: &str, now_ms: i64) -> Result<u32, IdentityError> {
        let count = {
            let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            let mut id = self.identity(host).unwrap_or(Identity {
                customer: customer.to_string(),
                enrolled_ms: 0,
                certificates: Vec::new(),
                revoked_ms: None,
            });
            let count = id.certificates.iter().filter(|c| c.not_after_ms > now_ms).count() as u32;
            id.certificates.clear();
            id.revoked_ms = Some(now_ms);
            self.put(host, &id)?;
            self.known.write().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), id);
            count
        };
        self.storage.flush().await?;
        Ok(count)
    }

    pub fn identity(&self, host: &str) -> Option<Identity> {
        self.known.read().unwrap_or_else(|p| p.into_inner()).get(host).cloned()
    }

    /// Whether the certificate with `serial` may speak for `host` now.
    /// Borrows the record (no copy): the ingest reader asks this for every batch.
    pub fn check(&self, host: &str, serial: Option<&str>, now_ms: i64) -> CertVerdict {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let Some(id) = known.get(host) else {
            return CertVerdict::Unenrolled;
        };
        if let Some(revoked) = id.revoked_ms {
            return CertVerdict::Refused(format!(
                "host {host} was revoked at {}; enroll it again with a new ticket",
                at(revoked)
            ));
        }
        match serial {
            Some(s) if id.certificates.iter().any(|c| c.serial == s && c.not_after_ms > now_ms) => {
                CertVerdict::Accepted { customer: id.customer.clone() }
            }
            _ => CertVerdict::Refused(format!(
                "this certificate was not issued to host {host} by its enrollment (or has expired); enroll again"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStorage;

    fn ticket(nonce: &str) -> Ticket {
        Ticket {
            host: "web-01".into(),
            customer: "acme".into(),
            expires_ms: i64::MAX,
            nonce: nonce.into(),
            ca_sha256: String::new(),
        }
    }

    fn signed(serial: &str, not_after_ms: i64) -> Signed {
        Signed { pem: String::new(), serial: serial.into(), not_after_ms }
    }

    #[tokio::test]
    async fn a_ticket_works_once_and_revocation_refuses_every_certificate() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let ids = IdentityService::open(storage.clone()).unwrap();
        assert_eq!(ids.check("web-01", Some("aa"), 0), CertVerdict::Unenrolled);
        ids.enroll(&ticket("n1"), &signed("aa", 1_000), 10).await.unwrap();
        let again = ids.enroll(&ticket("n1"), &signed("bb", 1_000), 20).await.unwrap_err();
        assert!(again.to_string().contains("already used"), "{again}");
        assert_eq!(ids.check("web-01", Some("aa"), 500), CertVerdict::Accepted { customer: "acme".into() });
        assert!(matches!(ids.check("web-01", Some("zz"), 500), CertVerdict::Refused(_)));
        assert!(matches!(ids.check("web-01", Some("aa"), 1_000), CertVerdict::Refused(_)), "expired");
        // Renewal: both certificates work until the old one expires.
        assert!(ids.renew("web-01", "zz", &signed("xx", 5_000), 600).await.is_err(), "an unknown certificate renewed");
        ids.renew("web-01", "aa", &signed("cc", 5_000), 600).await.unwrap();
        assert!(matches!(ids.check("web-01", Some("aa"), 700), CertVerdict::Accepted { .. }));
        assert!(matches!(ids.check("web-01", Some("cc"), 700), CertVerdict::Accepted { .. }));
        assert_eq!(ids.revoke("web-01", "acme", 800).await.unwrap(), 2);
        assert!(matches!(ids.check("web-01", Some("cc"), 900), CertVerdict::Refused(r) if r.contains("revoked")));
        assert!(ids.renew("web-01", "cc", &signed("dd", 9_000), 900).await.is_err());
        // A new ticket enrolls it again; the state survives a reopen.
        ids.enroll(&ticket("n2"), &signed("ee", 9_000), 1_000).await.unwrap();
        drop(ids);
        let ids = IdentityService::open(storage).unwrap();
        assert!(matches!(ids.check("web-01", Some("ee"), 1_100), CertVerdict::Accepted { .. }));
        assert!(ids.enroll(&ticket("n1"), &signed("ff", 9_000), 1_200).await.is_err());
    }

    /// Two services on one storage stand for two collectors: what one writes reaches the
    /// other's mirror only by `reload`.
    #[tokio::test]
    async fn reload_brings_in_what_another_service_wrote() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let (a, b) = (IdentityService::open(storage.clone()).unwrap(), IdentityService::open(storage.clone()).unwrap());
        a.enroll(&ticket("n1"), &signed("aa", 1_000), 10).await.unwrap();
        assert_eq!(b.check("web-01", Some("aa"), 500), CertVerdict::Unenrolled, "b has not reloaded yet");
        b.reload().unwrap();
        assert_eq!(b.check("web-01", Some("aa"), 500), CertVerdict::Accepted { customer: "acme".into() });
        a.revoke("web-01", "acme", 600).await.unwrap();
        assert!(matches!(b.check("web-01", Some("aa"), 700), CertVerdict::Accepted { .. }), "before b reloads");
        b.reload().unwrap();
        assert!(matches!(b.check("web-01", Some("aa"), 700), CertVerdict::Refused(r) if r.contains("revoked")));
        assert!(b.renew("web-01", "aa", &signed("bb", 9_000), 700).await.is_err());

        // A corrupt record fails the reload, names the host, and leaves the mirror as it was.
        storage.tree("identities").unwrap().insert(b"db-01", b"not json".to_vec()).unwrap();
        let err = b.reload().unwrap_err();
        assert!(err.to_string().contains("db-01"), "{err}");
        assert!(matches!(b.check("web-01", Some("aa"), 700), CertVerdict::Refused(_)));
    }

    /// Two collectors on one PostgreSQL database, each with its own `PgStorage`: after
    /// `refresh_tree` and `reload`, a revocation on one is refused on the other, and a ticket
    /// used on one is refused on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_a_revocation_and_a_used_ticket_reach_the_other_collector() {
        use crate::store::pg::{PgConnect, PgStorage};
        let url = crate::store::pg::testing::fresh_database().await;
        let open = || async { PgStorage::open(PgConnect::new(&url, None).unwrap()).await.unwrap() };
        let (pa, pb) = (open().await, open().await);
        let a = IdentityService::open(Arc::new(pa.clone())).unwrap();
        let b = IdentityService::open(Arc::new(pb.clone())).unwrap();
        let refresh = async || {
            pb.refresh_tree("identities").await.unwrap();
            pb.refresh_tree("tickets_used").await.unwrap();
            b.reload().unwrap();
        };

        a.enroll(&ticket("n1"), &signed("aa", 10_000), 10).await.unwrap();
        refresh().await;
        assert_eq!(b.check("web-01", Some("aa"), 500), CertVerdict::Accepted { customer: "acme".into() });
        let again = b.enroll(&ticket("n1"), &signed("bb", 10_000), 20).await.unwrap_err();
        assert!(matches!(again, IdentityError::TicketUsed { ref host, .. } if host == "web-01"), "{again}");

        a.revoke("web-01", "acme", 600).await.unwrap();
        assert!(matches!(b.check("web-01", Some("aa"), 700), CertVerdict::Accepted { .. }), "before the refresh");
        refresh().await;
        assert!(matches!(b.check("web-01", Some("aa"), 700), CertVerdict::Refused(r) if r.contains("revoked")));

        // The other way round: b enrolls the host again with a new ticket; a sees it.
        b.enroll(&ticket("n2"), &signed("cc", 10_000), 800).await.unwrap();
        pa.refresh_tree("identities").await.unwrap();
        pa.refresh_tree("tickets_used").await.unwrap();
        a.reload().unwrap();
        assert!(matches!(a.check("web-01", Some("cc"), 900), CertVerdict::Accepted { .. }));
        assert!(a.enroll(&ticket("n2"), &signed("dd", 10_000), 900).await.is_err());
    }
}
