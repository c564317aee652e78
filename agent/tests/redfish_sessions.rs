//! One reused SessionService session: created once, re-created on 401, deleted on shutdown; Basic auth when sessions are unsupported.

#[path = "redfish_support/mod.rs"]
mod common;

use std::sync::atomic::Ordering;

use common::*;
use pikett_agent::observation::State;
use pikett_agent::probes::Probe;
use pikett_agent::probes::redfish::RedfishProbe;

#[tokio::test]
async fn one_session_serves_many_polls_and_is_deleted_on_shutdown() {
    let bmc = TestBmc::start(R750).await;
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    for _ in 0..3 {
        let obs = p.poll().await;
        assert_eq!(checks(&obs)["redfish/bmc"].state, State::Ok);
    }
    assert_eq!(bmc.count("POST"), 1, "one login for three polls");
    assert_eq!(bmc.sessions(), 1);
    assert!(p.has_session().await);
    let seen = bmc.seen();
    let authed: Vec<_> = seen.iter().filter(|s| s.method == "GET" && s.target != "/redfish/v1").collect();
    assert!(!authed.is_empty());
    assert!(authed.iter().all(|s| s.token.is_some() && !s.basic), "every GET carries the token, never Basic");
    let tokens: std::collections::BTreeSet<_> = authed.iter().map(|s| s.token.clone()).collect();
    assert_eq!(tokens.len(), 1);

    p.shutdown().await;
    assert_eq!(bmc.count("DELETE"), 1);
    assert_eq!(bmc.sessions(), 0, "session left behind on the BMC");
    assert!(!p.has_session().await);
}

#[tokio::test]
async fn expired_session_is_recreated_once_on_401() {
    let bmc = TestBmc::start(R750).await;
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    p.poll().await;
    bmc.expire_sessions();
    let obs = p.poll().await;
    let all = checks(&obs);
    assert_eq!(all["redfish/bmc"].state, State::Ok, "{}", all["redfish/bmc"].summary);
    assert_eq!(all["redfish/system"].state, State::Ok);
    assert_eq!(
        bmc.count("POST"),
        2,
        "exactly one re-login: {:?}",
        bmc.seen().iter().filter(|s| s.method == "POST").count()
    );
    assert_eq!(bmc.sessions(), 1);
    p.shutdown().await;
    assert_eq!(bmc.sessions(), 0);
}

#[tokio::test]
async fn basic_auth_is_the_fallback_without_sessions() {
    let bmc = TestBmc::start(R750).await;
    bmc.state.sessions_disabled.store(true, Ordering::SeqCst);
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    let obs = p.poll().await;
    assert_eq!(checks(&obs)["redfish/bmc"].state, State::Ok, "{}", checks(&obs)["redfish/bmc"].summary);
    p.poll().await;
    assert_eq!(bmc.count("POST"), 1, "sessions probed once, then Basic");
    let gets: Vec<_> = bmc.seen().into_iter().filter(|s| s.method == "GET" && s.target != "/redfish/v1").collect();
    assert!(gets.iter().all(|s| s.basic && s.token.is_none()));
    p.shutdown().await;
    assert_eq!(bmc.count("DELETE"), 0);
}

#[tokio::test]
async fn sessions_url_comes_from_the_service_root_links() {
    let bmc = TestBmc::start(R750).await;
    // An iDRAC8-like root: the sessions collection somewhere else.
    let other = "/redfish/v1/Sessions";
    bmc.edit("/redfish/v1", |v| v["Links"]["Sessions"]["@odata.id"] = serde_json::json!(other));
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    p.poll().await;
    let posts: Vec<_> = bmc.seen().into_iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].target, other);
    p.shutdown().await;
}

#[tokio::test]
async fn dropping_the_probe_without_shutdown_still_frees_the_session() {
    let bmc = TestBmc::start(R750).await;
    {
        let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
        p.poll().await;
        assert_eq!(bmc.sessions(), 1);
    }
    for _ in 0..50 {
        if bmc.sessions() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(bmc.sessions(), 0);
}

#[tokio::test]
async fn never_more_than_max_concurrency_requests_in_flight() {
    for limit in [1usize, 2, 4] {
        let bmc = TestBmc::start(R750).await;
        bmc.set_latency(std::time::Duration::from_millis(30));
        let mut cfg = bmc.config();
        cfg.max_concurrency = limit;
        let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
        let obs = p.poll().await;
        assert_eq!(checks(&obs)["redfish/bmc"].state, State::Ok);
        p.shutdown().await;
        assert_eq!(bmc.max_in_flight(), limit, "max_concurrency = {limit}");
    }
}

#[tokio::test]
async fn session_is_given_back_when_a_poll_fails_and_recreated_after() {
    let bmc = TestBmc::start(R750).await;
    let mut cfg = bmc.config();
    cfg.timeout = std::time::Duration::from_millis(400);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    p.poll().await;
    assert_eq!(bmc.sessions(), 1);
    bmc.set_override("/redfish/v1", Override::Stall(std::time::Duration::from_secs(2)));
    let obs = p.poll().await;
    assert_eq!(checks(&obs)["redfish/system"].state, State::Unknown);
    for _ in 0..50 {
        if bmc.sessions() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(bmc.sessions(), 0, "session leaked after a failed poll");
    assert_eq!(bmc.count("DELETE"), 1);
    bmc.clear_override("/redfish/v1");
    let obs = p.poll().await;
    assert_eq!(checks(&obs)["redfish/system"].state, State::Ok);
    assert_eq!(bmc.count("POST"), 2);
    p.shutdown().await;
    assert_eq!(bmc.sessions(), 0);
}

#[tokio::test]
async fn a_login_answered_too_late_leaves_at_most_one_session_behind() {
    let bmc = TestBmc::start(R750).await;
    let mut cfg = bmc.config();
    cfg.timeout = std::time::Duration::from_millis(500);
    // The BMC creates the session, then answers after the agent has given up.
    *bmc.state.login_reply_delay.lock().unwrap() = std::time::Duration::from_millis(800);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    for poll in 1..=5 {
        let obs = p.poll().await;
        assert_eq!(checks(&obs)["redfish/system"].state, State::Unknown, "poll {poll}");
        // Let the late answer arrive (the session now exists on the BMC).
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(bmc.sessions() <= 1, "poll {poll}: {} agent sessions on the BMC", bmc.sessions());
    }
    // Once the BMC answers in time again, the agent logs in and keeps exactly its own.
    *bmc.state.login_reply_delay.lock().unwrap() = std::time::Duration::ZERO;
    let obs = p.poll().await;
    assert_eq!(checks(&obs)["redfish/system"].state, State::Ok);
    assert_eq!(bmc.sessions(), 1);
    // Other users' sessions (the fixture's, user root) were never touched.
    assert!(
        !bmc.seen().iter().any(|s| s.method == "DELETE" && s.target.contains("/Sessions/27")),
        "deleted another user's session"
    );
    p.shutdown().await;
    assert_eq!(bmc.sessions(), 0);
}

#[tokio::test]
async fn a_session_left_by_a_killed_agent_is_removed_at_the_next_start() {
    let bmc = TestBmc::start(R750).await;
    // The agent's state store outlives the process (it is in the spool).
    let state = memory_state();
    let mut p = RedfishProbe::new(bmc.config(), state.clone()).unwrap();
    p.poll().await;
    assert_eq!(bmc.sessions(), 1);
    // kill -9: no logout, no drop.
    std::mem::forget(p);
    // An operator's `pikett-agent test` meanwhile (its own state) leaves the daemon's
    // session alone.
    let mut test_run = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    test_run.poll().await;
    test_run.shutdown().await;
    assert_eq!(bmc.sessions(), 1, "a test run deleted the running agent's session");
    let mut p = RedfishProbe::new(bmc.config(), state.clone()).unwrap();
    let obs = p.poll().await;
    assert_eq!(checks(&obs)["redfish/bmc"].state, State::Ok);
    assert_eq!(bmc.sessions(), 1, "the killed agent's session is still there");
    p.shutdown().await;
    assert_eq!(bmc.sessions(), 0);
}

#[tokio::test]
async fn a_bmc_without_basic_auth_still_gets_its_session_login() {
    let bmc = TestBmc::start(R750).await;
    bmc.state.basic_disabled.store(true, Ordering::SeqCst);
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    let obs = p.poll().await;
    assert_eq!(checks(&obs)["redfish/system"].state, State::Ok, "{}", checks(&obs)["redfish/system"].summary);
    assert!(!bmc.seen().iter().any(|s| s.basic), "Basic auth used: {:?}", bmc.seen());
    p.shutdown().await;
    assert_eq!(bmc.sessions(), 0);
}

#[tokio::test]
async fn a_lost_login_whose_answer_has_not_come_is_found_at_the_next_login() {
    let bmc = TestBmc::start(R750).await;
    let mut cfg = bmc.config();
    cfg.timeout = std::time::Duration::from_millis(500);
    *bmc.state.login_reply_delay.lock().unwrap() = std::time::Duration::from_secs(3);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    assert_eq!(checks(&p.poll().await)["redfish/system"].state, State::Unknown);
    // The BMC holds the session; its answer is still on the way.
    assert_eq!(bmc.sessions(), 1);
    *bmc.state.login_reply_delay.lock().unwrap() = std::time::Duration::ZERO;
    assert_eq!(checks(&p.poll().await)["redfish/system"].state, State::Ok);
    assert_eq!(bmc.sessions(), 1, "the lost login's session is still on the BMC");
    p.shutdown().await;
    assert_eq!(bmc.sessions(), 0);
}
