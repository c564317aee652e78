//! Customer status page links: a per-customer bearer secret that opens a read-only page on
//! the HTTP port (`api::status_page`).
//!
//! Tree `status_links`: `l/` + id (big-endian) → JSON [`StatusLink`]; `next` → the last id
//! handed out. Only the SHA-256 of a secret is stored: the secret itself is shown once, when
//! the link is made. Mirrored in memory (links are few); every change is flushed before it
//! is answered. A revoked link is deleted (the audit log keeps who made and revoked it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use jiff::Timestamp;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::store::{Storage, StoreError, Tree, WriteBatch};

/// Random bytes in a secret: 256 bits, 43 characters of URL-safe base64.
const SECRET_BYTES: usize = 32;

const NEXT_KEY: &[u8] = b"next";

#[derive(Debug, thiserror::Error)]
pub enum StatusLinkError {
    #[error("status_links: {0}")]
    Store(#[from] StoreError),
    #[error("status_links record {key}: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("no status page link with id {0}")]
    NoSuchLink(u64),
    #[error("cannot make a secret: the system's random number generator failed")]
    Random,
}

/// One link, as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusLink {
    pub id: u64,
    pub customer: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    pub created_at: Timestamp,
    pub created_by: String,
}

pub struct StatusLinks {
    storage: Arc<dyn Storage>,
    tree: Arc<dyn Tree>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// By id; each with its hash decoded, for comparing.
    links: BTreeMap<u64, (StatusLink, [u8; 32])>,
}

fn link_key(id: u64) -> Vec<u8> {
    let mut k = b"l/".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn sha256(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl StatusLinks {
    pub fn open(storage: Arc<dyn Storage>) -> Result<StatusLinks, StatusLinkError> {
        let tree = storage.tree("status_links")?;
        let mut state = State::default();
        for item in tree.iter() {
            let (k, v) = item?;
            let corrupt = |source| StatusLinkError::Corrupt { key: String::from_utf8_lossy(&k).into_owned(), source };
            if k == NEXT_KEY {
                state.next_id = serde_json::from_slice(&v).map_err(corrupt)?;
            } else if k.starts_with(b"l/") {
                let link: StatusLink = serde_json::from_slice(&v).map_err(corrupt)?;
                match unhex(&link.secret_sha256) {
                    Some(hash) => {
                        state.links.insert(link.id, (link, hash));
                    }
                    // A link that can never match: left out, and said so.
                    None => tracing::error!(id = link.id, "status page link with a malformed hash ignored"),
                }
            }
        }
        Ok(StatusLinks { storage, tree, state: Mutex::new(state) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a link for `customer`, durably; returns it and its secret (shown this once).
    pub async fn create(
        &self,
        customer: &str,
        who: &str,
        now: Timestamp,
    ) -> Result<(StatusLink, String), StatusLinkError> {
        let mut raw = [0u8; SECRET_BYTES];
        ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| StatusLinkError::Random)?;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let hash = sha256(&secret);
        let link = {
            let mut st = self.lock();
            st.next_id += 1;
            let link = StatusLink {
                id: st.next_id,
                customer: customer.to_string(),
                secret_sha256: hex(&hash),
                created_at: now,
                created_by: who.to_string(),
            };
            let mut batch = WriteBatch::default();
            batch.insert(NEXT_KEY, serde_json::to_vec(&st.next_id).expect("a number serializes"));
            batch.insert(link_key(link.id), serde_json::to_vec(&link).expect("a link serializes"));
            self.tree.apply(batch)?;
            st.links.insert(link.id, (link.clone(), hash));
            link
        };
        self.storage.flush().await?;
        Ok((link, secret))
    }

    /// Every link, by id.
    pub fn list(&self) -> Vec<StatusLink> {
        self.lock().links.values().map(|(l, _)| l.clone()).collect()
    }

    /// Deletes link `id`, durably; returns it as it was.
    pub async fn revoke(&self, id: u64) -> Result<StatusLink, StatusLinkError> {
        let link = {
            let mut st = self.lock();
            if !st.links.contains_key(&id) {
                return Err(StatusLinkError::NoSuchLink(id));
            }
            self.tree.remove(&link_key(id))?;
            st.links.remove(&id).map(|(l, _)| l).ok_or(StatusLinkError::NoSuchLink(id))?
        };
        self.storage.flush().await?;
        Ok(link)
    }

    /// The customer whose link has this secret. The secret's hash is compared with every
    /// link's in constant time and without stopping at a match, so how long this takes says
    /// nothing about which (or whether a) link matched.
    pub fn customer_of(&self, secret: &str) -> Option<String> {
        let presented = sha256(secret);
        let st = self.lock();
        let mut found = None;
        for (link, hash) in st.links.values() {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(link.customer.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStorage;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[tokio::test]
    async fn a_secret_opens_its_customers_link_until_revoked_and_links_survive_reopening() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let links = StatusLinks::open(storage.clone()).unwrap();
        let (acme, acme_secret) = links.create("acme", "alice@local", t(0)).await.unwrap();
        let (globex, globex_secret) = links.create("globex", "bob@local", t(1)).await.unwrap();
        assert_eq!((acme.id, globex.id), (1, 2));
        assert_eq!(acme_secret.len(), 43, "{acme_secret}");
        assert_ne!(acme_secret, globex_secret);
        assert_eq!(links.customer_of(&acme_secret).as_deref(), Some("acme"));
        assert_eq!(links.customer_of(&globex_secret).as_deref(), Some("globex"));
        assert_eq!(links.customer_of("not-a-secret"), None);
        assert_eq!(links.customer_of(""), None);
        // Only the hash is stored, never the secret.
        for (_, v) in storage.tree("status_links").unwrap().iter().map(Result::unwrap) {
            let text = String::from_utf8_lossy(&v);
            assert!(!text.contains(&acme_secret) && !text.contains(&globex_secret), "{text}");
        }
        assert_eq!(acme.secret_sha256, hex(&sha256(&acme_secret)));

        let revoked = links.revoke(acme.id).await.unwrap();
        assert_eq!(revoked.customer, "acme");
        assert_eq!(links.customer_of(&acme_secret), None);
        assert!(matches!(links.revoke(acme.id).await, Err(StatusLinkError::NoSuchLink(1))));
        drop(links);

        let links = StatusLinks::open(storage).unwrap();
        assert_eq!(links.list(), vec![globex.clone()]);
        assert_eq!(links.customer_of(&globex_secret).as_deref(), Some("globex"));
        assert_eq!(links.customer_of(&acme_secret), None);
        // Ids are not handed out twice, also after a restart.
        let (next, _) = links.create("acme", "alice@local", t(2)).await.unwrap();
        assert_eq!(next.id, 3);
    }

    #[test]
    fn hex_round_trips_and_refuses_malformed_hashes() {
        let h = sha256("x");
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }
}
