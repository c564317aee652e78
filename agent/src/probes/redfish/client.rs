//! The HTTP side of the Redfish probe: one session, bounded concurrency, per-request timeout and a response-size cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use super::RedfishError;
use crate::errors::error_chain;

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Not logged in yet (the service root needs no credentials).
    None,
    /// A SessionService session: token and the session's URL (for DELETE).
    Session { token: String, location: Option<String> },
    /// HTTP Basic on every request (BMCs without sessions).
    Basic,
}

/// A Redfish HTTP client shared by the concurrent requests of one poll.
pub struct Client {
    http: reqwest::Client,
    base: String,
    username: String,
    password: String,
    permits: Semaphore,
    timeout: Duration,
    max_bytes: u64,
    auth: Mutex<Auth>,
    /// Sessions collection URL from the service root's `Links.Sessions`.
    sessions_url: Mutex<Option<String>>,
    requests: AtomicU64,
    /// The BMC may hold sessions of ours we cannot delete by their URL: a login whose
    /// answer never came (the BMC created the session, then the request timed out), or
    /// a previous agent process killed before its logout. Set at start and after such a
    /// login; the next login first removes them ([`Client::remove_stale_sessions`]).
    stale_sessions_possible: AtomicBool,
}

/// Cuts a response body for an error message.
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Response {
    status: StatusCode,
    token: Option<String>,
    location: Option<String>,
    body: Vec<u8>,
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        http: reqwest::Client,
        base: String,
        username: String,
        password: String,
        max_concurrency: usize,
        timeout: Duration,
        max_bytes: u64,
    ) -> Arc<Client> {
        Arc::new(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            username,
            password,
            permits: Semaphore::new(max_concurrency.max(1)),
            timeout,
            max_bytes,
            auth: Mutex::new(Auth::None),
            sessions_url: Mutex::new(None),
            requests: AtomicU64::new(0),
            stale_sessions_possible: AtomicBool::new(true),
        })
    }

    /// Requests sent so far (for the benchmark and the `redfish/bmc` summary).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub async fn auth(&self) -> Auth {
        self.auth.lock().await.clone()
    }

    pub async fn set_sessions_url(&self, url: Option<String>) {
        *self.sessions_url.lock().await = url;
    }

    /// A full URL for an `@odata.id` path (fragment removed) or an absolute URL.
    pub fn url(&self, path: &str) -> String {
        let path = path.split('#').next().unwrap_or(path);
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// One request under a concurrency permit, bounded by the per-request timeout
    /// and the size cap (the body is streamed and dropped at the cap).
    async fn send(
        &self,
        method: Method,
        url: &str,
        auth: &Auth,
        json: Option<&Value>,
    ) -> Result<Response, RedfishError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RedfishError::Transport { url: url.to_string(), reason: "client is shut down".into() })?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = self.http.request(method.clone(), url).header("Accept", "application/json");
        req = match auth {
            Auth::Session { token, .. } => req.header("X-Auth-Token", token),
            Auth::Basic => req.basic_auth(&self.username, Some(&self.password)),
            Auth::None => req,
        };
        if let Some(j) = json {
            req = req.json(j);
        }
        let fut = async {
            let mut resp = req.send().await.map_err(|e| self.transport(&method, url, e))?;
            let status = resp.status();
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let token = header("X-Auth-Token");
            let location = header("Location");
            if let Some(len) = resp.content_length()
                && len > self.max_bytes
            {
                return Err(RedfishError::TooLarge { url: url.to_string(), limit: self.max_bytes });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(&method, url, e))? {
                if (body.len() + chunk.len()) as u64 > self.max_bytes {
                    return Err(RedfishError::TooLarge { url: url.to_string(), limit: self.max_bytes });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response { status, token, location, body })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                Err(RedfishError::Timeout { method: method.to_string(), url: url.to_string(), after: self.timeout })
            }
        }
    }

    /// Classifies a reqwest error: its own timeout reads like ours.
    fn transport(&self, method: &Method, url: &str, e: reqwest::Error) -> RedfishError {
        if e.is_timeout() {
            RedfishError::Timeout { method: method.to_string(), url: url.to_string(), after: self.timeout }
        } else {
            let mut reason = error_chain(&e);
            if reason.contains("certificate") {
                reason.push_str(
                    " (the BMC's certificate does not verify against ca_file or the system roots: \
                     set ca_file to the CA that signed it, or tls_insecure = true)",
                );
            }
            RedfishError::Transport { url: url.to_string(), reason }
        }
    }

    /// GET a resource as JSON; on 401 with a session, logs in again once and retries.
    pub async fn get(&self, path: &str) -> Result<Value, RedfishError> {
        let url = self.url(path);
        let mut relogged = false;
        loop {
            let auth = self.auth().await;
            let resp = self.send(Method::GET, &url, &auth, None).await?;
            if resp.status == StatusCode::UNAUTHORIZED {
                if !relogged && matches!(auth, Auth::Session { .. }) {
                    relogged = true;
                    self.relogin(&auth).await?;
                    continue;
                }
                return Err(RedfishError::Unauthorized { url });
            }
            if !resp.status.is_success() {
                return Err(RedfishError::Status {
                    method: "GET".into(),
                    url,
                    status: resp.status.as_u16(),
                    body: snippet(&resp.body),
                });
            }
            return serde_json::from_slice(&resp.body).map_err(|e| RedfishError::Json { url, reason: e.to_string() });
        }
    }

    /// Logs in unless already logged in.
    pub async fn ensure_login(&self) -> Result<(), RedfishError> {
        let mut auth = self.auth.lock().await;
        if *auth == Auth::None {
            *auth = self.login().await?;
        }
        Ok(())
    }

    /// Replaces a session the BMC rejected, unless another request already did.
    async fn relogin(&self, rejected: &Auth) -> Result<(), RedfishError> {
        let mut auth = self.auth.lock().await;
        if *auth == *rejected {
            tracing::info!(endpoint = %self.base, "redfish session expired (HTTP 401); logging in again");
            *auth = Auth::None;
            *auth = self.login().await?;
        }
        Ok(())
    }

    /// POSTs to the Sessions collection; Basic auth when the BMC has no SessionService.
    async fn login(&self) -> Result<Auth, RedfishError> {
        let Some(sessions) = self.sessions_url.lock().await.clone() else {
            tracing::info!(endpoint = %self.base, "service root has no Links.Sessions; using HTTP Basic auth");
            return Ok(Auth::Basic);
        };
        let url = self.url(&sessions);
        if self.stale_sessions_possible.load(Ordering::SeqCst) {
            self.remove_stale_sessions(&url).await?;
        }
        let body = serde_json::json!({"UserName": self.username, "Password": self.password});
        let resp = match self.send(Method::POST, &url, &Auth::None, Some(&body)).await {
            Ok(resp) => resp,
            Err(e) => {
                // The BMC may have created the session before the answer was lost.
                if matches!(e, RedfishError::Timeout { .. } | RedfishError::Transport { .. }) {
                    self.stale_sessions_possible.store(true, Ordering::SeqCst);
                }
                return Err(e);
            }
        };
        match resp.status {
            s if s.is_success() => match resp.token {
                Some(token) => {
                    let location = resp.location.or_else(|| {
                        serde_json::from_slice::<Value>(&resp.body)
                            .ok()
                            .and_then(|v| v.get("@odata.id").and_then(Value::as_str).map(str::to_string))
                    });
                    tracing::debug!(endpoint = %self.base, "redfish session created");
                    Ok(Auth::Session { token, location })
                }
                None => {
                    tracing::warn!(endpoint = %self.base, "session POST returned no X-Auth-Token; using HTTP Basic auth");
                    Ok(Auth::Basic)
                }
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RedfishError::Unauthorized { url }),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
                tracing::info!(endpoint = %self.base, status = resp.status.as_u16(), "sessions unsupported; using HTTP Basic auth");
                Ok(Auth::Basic)
            }
            s => {
                Err(RedfishError::Status { method: "POST".into(), url, status: s.as_u16(), body: snippet(&resp.body) })
            }
        }
    }

    /// Deletes the sessions of our user on the BMC (with Basic auth: there is no session of
    /// ours to use yet). iDRACs allow only a handful of sessions; leaked ones would lock
    /// out the agent and the staff until they time out. The account is the agent's own
    /// (a dedicated read-only user), so a session under its name that the agent does not
    /// hold is a leftover. Sessions of other users are never touched. Best effort: a
    /// failure is logged and the login goes ahead; only rejected credentials stop it (a
    /// login with them would fail too, and each failed attempt counts towards the BMC's
    /// lock-out).
    async fn remove_stale_sessions(&self, sessions_url: &str) -> Result<(), RedfishError> {
        let list = match self.send(Method::GET, sessions_url, &Auth::Basic, None).await {
            Ok(r) if r.status.is_success() => serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null),
            Ok(r) if r.status == StatusCode::UNAUTHORIZED => {
                return Err(RedfishError::Unauthorized { url: sessions_url.to_string() });
            }
            Ok(r) => {
                tracing::debug!(
                    status = r.status.as_u16(),
                    "redfish: cannot list sessions with Basic auth; stale sessions of ours may remain until they time out"
                );
                self.stale_sessions_possible.store(false, Ordering::SeqCst);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "redfish: cannot list sessions; stale sessions of ours may remain until they time out");
                return Ok(());
            }
        };
        let links: Vec<String> = list
            .get("Members")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(|m| m.get("@odata.id").and_then(Value::as_str).map(str::to_string)).collect())
            .unwrap_or_default();
        let mut removed = 0;
        for link in links {
            let url = self.url(&link);
            let Ok(r) = self.send(Method::GET, &url, &Auth::Basic, None).await else {
                continue;
            };
            let user = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.get("UserName").and_then(Value::as_str).map(str::to_string));
            if !r.status.is_success() || user.as_deref() != Some(self.username.as_str()) {
                continue;
            }
            match self.send(Method::DELETE, &url, &Auth::Basic, None).await {
                Ok(r) if r.status.is_success() || r.status == StatusCode::NOT_FOUND => removed += 1,
                Ok(r) => {
                    tracing::warn!(url = %url, status = r.status.as_u16(), "deleting a stale redfish session failed")
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "deleting a stale redfish session failed"),
            }
        }
        if removed > 0 {
            tracing::info!(endpoint = %self.base, removed, "redfish: removed stale sessions of the agent's user (left by a timed-out login or an earlier process)");
        }
        self.stale_sessions_possible.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Deletes the session (best effort) and forgets it, so the BMC's session slots are not leaked.
    pub async fn logout(&self) {
        let old = std::mem::replace(&mut *self.auth.lock().await, Auth::None);
        if let Auth::Session { location: Some(location), .. } = &old {
            let url = self.url(location);
            match self.send(Method::DELETE, &url, &old, None).await {
                Ok(r) if r.status.is_success() || r.status == StatusCode::NOT_FOUND => {
                    tracing::debug!(endpoint = %self.base, "redfish session deleted");
                }
                Ok(r) => {
                    tracing::warn!(url = %url, status = r.status.as_u16(), "deleting redfish session failed")
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "deleting redfish session failed"),
            }
        }
    }
}
