//! Staff tokens and roles.
//!
//! Tokens live in a JSON file (`staff_tokens_file`, default `<data_dir>/tokens.json`,
//! mode 0600) so that `pikett-collector token create|list|revoke` work whether the service
//! runs or not; the service notices a changed file at the next call, so a revoked token
//! stops working at once. Only a slow hash of each token is stored (PBKDF2-HMAC-SHA256,
//! 100,000 rounds, random salt); the token itself is printed once. A token is
//! `pkt_<id>_<secret>`: the id finds its record without trying every hash.
//!
//! Verified tokens are remembered by their SHA-256 until the file changes, so the slow
//! hash is paid once per token, not once per call.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const ROUNDS: u32 = 100_000;

/// What a staff member may do. Ordered: each role may do what the ones below may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also: ack, resolve, silence, maintenance, incident update/escalate/close, SLA classification.
    Engineer,
    /// Also: on-call overrides, enrollment tickets, revocation, the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "engineer" => Some(Role::Engineer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub role: Role,
    pub created_ms: i64,
    salt: String,
    hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StaffError {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a token file: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("{path}: readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Readable { path: PathBuf, mode: u32 },
    #[error("user names are 1 to 64 letters, digits, '.', '_', '-' or '@': {0:?}")]
    BadUser(String),
    #[error("no token {0:?}")]
    NoSuchToken(String),
}

/// Why a token was not accepted (the message the caller sees).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not a pikett staff token")]
    Malformed,
    #[error("unknown or revoked staff token")]
    Unknown,
    #[error("the token file cannot be read: {0}")]
    Unavailable(String),
}

/// A staff member, as a token identifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staff {
    pub user: String,
    pub role: Role,
}

fn hash(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let rounds = NonZeroU32::new(ROUNDS).expect("non-zero");
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, secret.as_bytes(), &mut out);
    out
}

fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.trim().strip_prefix("pkt_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn read_file(path: &Path) -> Result<TokenFile, StaffError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| StaffError::Corrupt { path: path.to_owned(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(source) => Err(StaffError::File { path: path.to_owned(), source }),
    }
}

fn write_file(path: &Path, file: &TokenFile) -> Result<(), StaffError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| StaffError::File { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec_pretty(file).expect("serializes")).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `token create`: a new token for `user` with `role`. Returns the token (shown once).
pub fn create(path: &Path, user: &str, role: Role, now_ms: i64) -> Result<(String, TokenRecord), StaffError> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if user.is_empty() || user.len() > 64 || !user.chars().all(valid) {
        return Err(StaffError::BadUser(user.to_string()));
    }
    let mut file = read_file(path)?;
    let id: String = (0..4).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let salt: [u8; 16] = rand::random();
    let record = TokenRecord {
        id: id.clone(),
        user: user.to_string(),
        role,
        created_ms: now_ms,
        salt: URL_SAFE_NO_PAD.encode(salt),
        hash: URL_SAFE_NO_PAD.encode(hash(&salt, &secret)),
    };
    file.tokens.push(record.clone());
    write_file(path, &file)?;
    Ok((format!("pkt_{id}_{secret}"), record))
}

/// `token list`.
pub fn list(path: &Path) -> Result<Vec<TokenRecord>, StaffError> {
    Ok(read_file(path)?.tokens)
}

/// `token revoke ID|USER`: removes a token by id, or every token of a user.
pub fn revoke(path: &Path, id_or_user: &str) -> Result<Vec<TokenRecord>, StaffError> {
    let mut file = read_file(path)?;
    let (gone, kept): (Vec<_>, Vec<_>) =
        file.tokens.into_iter().partition(|t| t.id == id_or_user || t.user == id_or_user);
    if gone.is_empty() {
        return Err(StaffError::NoSuchToken(id_or_user.to_string()));
    }
    file.tokens = kept;
    write_file(path, &file)?;
    Ok(gone)
}

/// The serving collector's view of the token file.
pub struct StaffTokens {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    /// (modification time, length, inode) of the file as loaded; `None`: no file.
    stamp: Option<(std::time::SystemTime, u64, u64)>,
    tokens: Vec<TokenRecord>,
    /// SHA-256 of tokens verified against this version of the file → their record.
    verified: HashMap<Vec<u8>, usize>,
    error: Option<String>,
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl StaffTokens {
    /// Checks the file's mode at start-up: a token file readable by others is refused.
    pub fn open(path: &Path) -> Result<StaffTokens, StaffError> {
        #[cfg(unix)]
        if let Ok(m) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                return Err(StaffError::Readable { path: path.to_owned(), mode });
            }
        }
        let tokens = StaffTokens { path: path.to_owned(), loaded: Mutex::new(Loaded::default()) };
        tokens.refresh(&mut tokens.loaded.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(tokens)
    }

    fn refresh(&self, loaded: &mut Loaded) {
        let now = stamp(&self.path);
        if now == loaded.stamp && (now.is_some() || loaded.tokens.is_empty()) && loaded.error.is_none() {
            return;
        }
        *loaded = match read_file(&self.path) {
            Ok(file) => Loaded { stamp: now, tokens: file.tokens, ..Default::default() },
            Err(e) => {
                tracing::error!(error = %e, "staff token file unreadable; refusing token calls until it is fixed");
                Loaded { stamp: now, error: Some(e.to_string()), ..Default::default() }
            }
        };
    }

    /// Whether the token file exists: then every staff call needs a token. Revoking the
    /// last token leaves the file (with no token) and so locks staff calls out rather than
    /// falling back to loopback access.
    pub fn configured(&self) -> bool {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut loaded);
        loaded.stamp.is_some() || loaded.error.is_some()
    }

    pub fn authenticate(&self, token: &str) -> Result<Staff, AuthError> {
        let (id, secret) = split(token).ok_or(AuthError::Malformed)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()).as_ref().to_vec();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut loaded);
        if let Some(e) = &loaded.error {
            return Err(AuthError::Unavailable(e.clone()));
        }
        if let Some(&i) = loaded.verified.get(&digest) {
            let t = &loaded.tokens[i];
            return Ok(Staff { user: t.user.clone(), role: t.role });
        }
        let Some(record) = loaded.tokens.iter().find(|t| t.id == id).cloned() else {
            return Err(AuthError::Unknown);
        };
        let stamp = loaded.stamp;
        // The slow hash runs without the lock: other calls go on meanwhile.
        drop(loaded);
        let salt = URL_SAFE_NO_PAD.decode(&record.salt).map_err(|_| AuthError::Unknown)?;
        let expected = URL_SAFE_NO_PAD.decode(&record.hash).map_err(|_| AuthError::Unknown)?;
        let rounds = NonZeroU32::new(ROUNDS).expect("non-zero");
        ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, &salt, secret.as_bytes(), &expected)
            .map_err(|_| AuthError::Unknown)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        // Remember it only if the file did not change meanwhile (a revocation must win).
        if loaded.stamp == stamp
            && let Some(i) = loaded.tokens.iter().position(|t| t.id == record.id)
        {
            loaded.verified.insert(digest, i);
        }
        Ok(Staff { user: record.user, role: record.role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_until_revoked_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let tokens = StaffTokens::open(&path).unwrap();
        assert!(!tokens.configured(), "no token file: loopback mode");
        let (alice, record) = create(&path, "alice", Role::Engineer, 1).unwrap();
        assert!(tokens.configured(), "a new token file was not noticed");
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(!stored.contains(alice.split('_').next_back().unwrap()), "the secret was stored");
        assert_eq!(tokens.authenticate(&alice).unwrap(), Staff { user: "alice".into(), role: Role::Engineer });
        assert_eq!(tokens.authenticate(&alice).unwrap().user, "alice", "cached");
        let wrong = format!("pkt_{}_{}", record.id, "x".repeat(43));
        assert_eq!(tokens.authenticate(&wrong), Err(AuthError::Unknown));
        assert_eq!(tokens.authenticate("Bearer nonsense"), Err(AuthError::Malformed));
        let (bob, _) = create(&path, "bob", Role::Viewer, 2).unwrap();
        assert_eq!(revoke(&path, "alice").unwrap().len(), 1);
        assert_eq!(tokens.authenticate(&alice), Err(AuthError::Unknown), "a revoked token still works");
        assert_eq!(tokens.authenticate(&bob).unwrap().role, Role::Viewer);
        assert!(matches!(revoke(&path, "carol"), Err(StaffError::NoSuchToken(_))));
        revoke(&path, "bob").unwrap();
        assert!(tokens.configured(), "revoking the last token fell back to loopback access");
        assert!(matches!(create(&path, "bad user", Role::Admin, 3), Err(StaffError::BadUser(_))));
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        create(&path, "alice", Role::Admin, 1).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = StaffTokens::open(&path).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
