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
    /// A login's answer was lost (timed out, connection dropped): the BMC may hold a
    /// session of ours whose URL we never learnt. The next successful login looks for
    /// it ([`Client::remove_lost_sessions`]). A late answer that does come is handled
    /// at once: its session is deleted ([`LateLogin`]).
    lost_login: AtomicBool,
    /// Sessions of ours to delete once logged in: the one an earlier agent process held
    /// when it was killed (remembered in the state store by the probe).
    leftovers: std::sync::Mutex<Vec<String>>,
}

/// How long a login's answer is still awaited in the background after the caller gave
/// up, so the session it creates can be deleted instead of leaked.
const LATE_LOGIN_WAIT: Duration = Duration::from_secs(120);

/// Classifies a reqwest error: its own timeout reads like ours.
fn transport_error(method: &Method, url: &str, e: reqwest::Error, timeout: Duration) -> RedfishError {
    if e.is_timeout() {
        RedfishError::Timeout { method: method.to_string(), url: url.to_string(), after: timeout }
    } else {
        let mut reason = error_chain(&e);
        if reason.contains("certificate") {
            reason.push_str(
                " (the BMC's certificate does not verify against ca_file, tls_fingerprint or the system roots: \
                 set ca_file to the CA that signed it, server_name to the name it carries, or pin it with tls_fingerprint)",
            );
        }
        RedfishError::Transport { url: url.to_string(), reason }
    }
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
            lost_login: AtomicBool::new(false),
            leftovers: std::sync::Mutex::new(Vec::new()),
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
        match tokio::time::timeout(self.timeout, self.request(method.clone(), url, auth, json, None)).await {
            Ok(r) => r,
            Err(_) => {
                Err(RedfishError::Timeout { method: method.to_string(), url: url.to_string(), after: self.timeout })
            }
        }
    }

    /// The request as a future that owns what it needs (so a login can outlive its
    /// caller); `limit` replaces the client's per-request timeout.
    fn request(
        &self,
        method: Method,
        url: &str,
        auth: &Auth,
        json: Option<&Value>,
        limit: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<Response, RedfishError>> + Send + 'static {
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
        if let Some(limit) = limit {
            req = req.timeout(limit);
        }
        let (url, max_bytes, timeout) = (url.to_string(), self.max_bytes, limit.unwrap_or(self.timeout));
        async move {
            let transport = |e| transport_error(&method, &url, e, timeout);
            let mut resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let token = header("X-Auth-Token");
            let location = header("Location");
            if let Some(len) = resp.content_length()
                && len > max_bytes
            {
                return Err(RedfishError::TooLarge { url, limit: max_bytes });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                if (body.len() + chunk.len()) as u64 > max_bytes {
                    return Err(RedfishError::TooLarge { url, limit: max_bytes });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response { status, token, location, body })
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
        let body = serde_json::json!({"UserName": self.username, "Password": self.password});
        // The POST runs on its own task: when its answer comes after we gave up (the BMC
        // created the session, then answered slowly), the session is deleted, not leaked.
        let mut post = tokio::spawn(self.request(Method::POST, &url, &Auth::None, Some(&body), Some(LATE_LOGIN_WAIT)));
        let resp = match tokio::time::timeout(self.timeout, &mut post).await {
            Ok(Ok(Ok(resp))) => resp,
            Ok(Ok(Err(e))) => {
                // The BMC may have created the session before the answer was lost.
                if matches!(e, RedfishError::Timeout { .. } | RedfishError::Transport { .. }) {
                    self.lost_login.store(true, Ordering::SeqCst);
                }
                return Err(e);
            }
            Ok(Err(join)) => {
                self.lost_login.store(true, Ordering::SeqCst);
                return Err(RedfishError::Transport { url, reason: format!("login task failed: {join}") });
            }
            Err(_) => {
                // Whatever the late answer brings, the next login looks for lost sessions
                // too (the answer may never come).
                self.lost_login.store(true, Ordering::SeqCst);
                let late = LateLogin { http: self.http.clone(), base: self.base.clone() };
                tokio::spawn(late.delete_when_answered(post));
                return Err(RedfishError::Timeout { method: "POST".into(), url, after: self.timeout });
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
                    let auth = Auth::Session { token, location };
                    self.remove_lost_sessions(&auth, &url).await;
                    Ok(auth)
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

    /// Sessions of ours to delete at the next login (an earlier process's, by its URL).
    pub fn delete_at_login(&self, location: String) {
        self.leftovers.lock().unwrap_or_else(|p| p.into_inner()).push(location);
    }

    /// The URL of the session the client holds, if any.
    pub async fn session_location(&self) -> Option<String> {
        match &*self.auth.lock().await {
            Auth::Session { location, .. } => location.clone(),
            _ => None,
        }
    }

    /// Right after a login (with its new session `auth`): deletes the sessions of ours
    /// the BMC may still hold. iDRACs allow only a handful of sessions; leaked ones lock
    /// out the agent and the staff until they time out.
    /// - An earlier process's session, by its remembered URL.
    /// - After a login whose answer never came: every session of our user but the new
    ///   one, since the lost one cannot be told apart. The account should be the agent's
    ///   own (a dedicated read-only user); sessions of other users are never touched.
    ///
    /// Best effort: failures are logged, the login stands.
    async fn remove_lost_sessions(&self, auth: &Auth, sessions_url: &str) {
        let own = match auth {
            Auth::Session { location: Some(l), .. } => Some(self.url(l)),
            _ => None,
        };
        let mut doomed: Vec<String> = std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .map(|l| self.url(&l))
            .collect();
        if self.lost_login.swap(false, Ordering::SeqCst) {
            match self.sessions_of_our_user(auth, sessions_url).await {
                Ok(ours) => doomed.extend(ours),
                Err(e) => {
                    tracing::warn!(error = %e, "redfish: cannot list sessions after a lost login; a session of ours may remain until it times out");
                }
            }
        }
        doomed.retain(|d| Some(d) != own.as_ref());
        doomed.sort();
        doomed.dedup();
        let mut removed = 0;
        for url in doomed {
            match self.send(Method::DELETE, &url, auth, None).await {
                Ok(r) if r.status.is_success() => removed += 1,
                Ok(r) if r.status == StatusCode::NOT_FOUND => {}
                Ok(r) => {
                    tracing::warn!(url = %url, status = r.status.as_u16(), "deleting a stale redfish session failed")
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "deleting a stale redfish session failed"),
            }
        }
        if removed > 0 {
            tracing::info!(endpoint = %self.base, removed, "redfish: removed sessions of ours left by a lost login or an earlier process");
        }
    }

    /// The URLs of the sessions on the BMC whose `UserName` is ours.
    async fn sessions_of_our_user(&self, auth: &Auth, sessions_url: &str) -> Result<Vec<String>, RedfishError> {
        let r = self.send(Method::GET, sessions_url, auth, None).await?;
        if !r.status.is_success() {
            return Err(RedfishError::Status {
                method: "GET".into(),
                url: sessions_url.to_string(),
                status: r.status.as_u16(),
                body: snippet(&r.body),
            });
        }
        let list: Value = serde_json::from_slice(&r.body)
            .map_err(|e| RedfishError::Json { url: sessions_url.to_string(), reason: e.to_string() })?;
        let mut ours = Vec::new();
        for member in list.get("Members").and_then(Value::as_array).into_iter().flatten() {
            let Some(link) = member.get("@odata.id").and_then(Value::as_str) else { continue };
            let url = self.url(link);
            let user = match member.get("UserName").and_then(Value::as_str) {
                Some(u) => Some(u.to_string()),
                None => match self.send(Method::GET, &url, auth, None).await {
                    Ok(r) if r.status.is_success() => serde_json::from_slice::<Value>(&r.body)
                        .ok()
                        .and_then(|v| v.get("UserName").and_then(Value::as_str).map(str::to_string)),
                    _ => None,
                },
            };
            if user.as_deref() == Some(self.username.as_str()) {
                ours.push(url);
            }
        }
        Ok(ours)
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

/// A login the caller gave up on, still awaited so its session can be deleted.
struct LateLogin {
    http: reqwest::Client,
    base: String,
}

impl LateLogin {
    async fn delete_when_answered(self, post: tokio::task::JoinHandle<Result<Response, RedfishError>>) {
        let Ok(Ok(resp)) = post.await else {
            return; // never answered: the next login looks for the session
        };
        let (Some(token), Some(location)) = (resp.token, resp.location.filter(|_| resp.status.is_success())) else {
            return;
        };
        let url = if location.starts_with("http") { location } else { format!("{}{location}", self.base) };
        match self.http.delete(&url).header("X-Auth-Token", &token).send().await {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                tracing::info!(url = %url, "redfish: deleted the session of a login answered too late");
            }
            Ok(r) => {
                tracing::warn!(url = %url, status = r.status().as_u16(), "redfish: cannot delete the session of a late login")
            }
            Err(e) => {
                tracing::warn!(url = %url, error = %error_chain(&e), "redfish: cannot delete the session of a late login")
            }
        }
    }
}
