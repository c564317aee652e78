//! Leader-only services on every node: the staff API and the HTTP pages that need the fault
//! engine are served by the leader alone, but every collector listens for them.
//!
//! A [`Gate`] stands in the gRPC router for one service: while this node leads it passes
//! each call to the service the leader built (published on a [`LeaderSlot`]); on a follower it
//! answers `UNAVAILABLE` with the leader's address in the `pikett-leader` metadata, and the
//! CLI asks there. A redirect, not a proxy: a follower forwarding calls from this host would
//! make them loopback calls at the leader, and loopback callers are local admins while no
//! staff token exists.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

/// The metadata key naming the leader's gRPC address in a follower's `UNAVAILABLE` answer.
pub const LEADER_METADATA: &str = "pikett-leader";

/// What a follower knows about the leader, for its redirects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownLeader {
    /// The leader's node name, when one leads.
    pub node: Option<String>,
    /// Where its gRPC port is reached (its `[store] advertise`, or its listen address).
    pub addr: Option<String>,
}

/// The `UNAVAILABLE` status a follower answers a leader-only call with.
pub fn not_the_leader(me: &str, leader: &KnownLeader) -> tonic::Status {
    let message = match (&leader.node, &leader.addr) {
        (Some(node), Some(addr)) => {
            format!("this collector ({me}) is not the leader; the leader is {node} at {addr}: ask there")
        }
        (Some(node), None) => format!("this collector ({me}) is not the leader; the leader is {node}"),
        _ => format!(
            "this collector ({me}) is not the leader, and no collector leads right now: try again in a few seconds"
        ),
    };
    let mut status = tonic::Status::unavailable(message);
    if let Some(addr) = leader.addr.as_deref()
        && let Ok(value) = addr.parse()
    {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// Where the leader publishes a service it built; the [`Gate`]s read it.
pub struct LeaderSlot<S> {
    tx: watch::Sender<Option<S>>,
}

impl<S: Clone> LeaderSlot<S> {
    pub fn new() -> LeaderSlot<S> {
        LeaderSlot { tx: watch::Sender::new(None) }
    }

    /// From now on calls go to `service`.
    pub fn publish(&self, service: S) {
        self.tx.send_replace(Some(service));
    }

    /// A gate in front of this slot, answering as node `me` with what `leader` says.
    pub fn gate(&self, me: &str, leader: watch::Receiver<KnownLeader>) -> Gate<S> {
        Gate { current: self.tx.subscribe(), me: me.into(), leader }
    }

    /// The service published, if any.
    pub fn get(&self) -> Option<S> {
        self.tx.borrow().clone()
    }

    /// What is published, now and later.
    pub fn subscribe(&self) -> watch::Receiver<Option<S>> {
        self.tx.subscribe()
    }
}

impl<S: Clone> Default for LeaderSlot<S> {
    fn default() -> Self {
        LeaderSlot::new()
    }
}

/// One leader-only gRPC service in the router; see the module doc.
#[derive(Clone)]
pub struct Gate<S> {
    current: watch::Receiver<Option<S>>,
    me: std::sync::Arc<str>,
    leader: watch::Receiver<KnownLeader>,
}

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the inner service's, checked per call by `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.current.borrow().clone();
        match inner {
            Some(service) => Box::pin(service.oneshot(request)),
            None => {
                let status = not_the_leader(&self.me, &self.leader.borrow());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<Body>> for Echo {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(http::Response::builder().status(200).body(Body::empty()).unwrap()))
        }
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<(String, Option<String>)> {
        let h = response.headers();
        let code = h.get("grpc-status")?.to_str().ok()?.to_string();
        let leader = h.get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string);
        Some((code, leader))
    }

    #[tokio::test]
    async fn a_follower_redirects_to_the_leader_and_a_leader_serves() {
        let slot = LeaderSlot::<Echo>::new();
        let (leader_tx, leader_rx) = watch::channel(KnownLeader::default());
        let mut gate = slot.gate("b", leader_rx);

        // No leader known: UNAVAILABLE without an address.
        let r = gate.call(http::Request::new(Body::empty())).await.unwrap();
        assert_eq!(grpc_status(&r), Some(("14".into(), None)));

        leader_tx.send_replace(KnownLeader { node: Some("a".into()), addr: Some("10.0.0.1:9740".into()) });
        let r = gate.call(http::Request::new(Body::empty())).await.unwrap();
        assert_eq!(grpc_status(&r), Some(("14".into(), Some("10.0.0.1:9740".into()))));
        let message = not_the_leader("b", &leader_tx.borrow()).message().to_string();
        assert!(message.contains("the leader is a at 10.0.0.1:9740"), "{message}");

        // This node leads now: calls reach the service.
        slot.publish(Echo);
        let r = gate.call(http::Request::new(Body::empty())).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(grpc_status(&r), None);
    }
}
