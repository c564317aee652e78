//! `http` checks against real local HTTP and HTTPS servers.

#[path = "checks_support/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use common::{DAY, TestCa, https_server, poll, probe, sample};
use pikett_agent::observation::State;

async fn http_server() -> SocketAddr {
    let app = Router::new()
        .route("/health", get(|| async { "status: ok" }))
        .route("/error", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "status: ok but failing") }))
        .route("/redirect", get(|| async { (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/health")]) }))
        .route("/teapot", get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn http_check(url: &str, extra: &str) -> String {
    format!("name = \"web\"\nkind = \"http\"\nurl = {url:?}\ntimeout = \"2s\"\n{extra}")
}

#[tokio::test]
async fn healthy_endpoint_is_ok_with_latency() {
    let addr = http_server().await;
    let mut p = probe(&http_check(&format!("http://{addr}/health"), "expect_body = \"ok\""));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.name, "http/web");
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    assert!(c.summary.starts_with("HTTP 200"), "{}", c.summary);
    let d = sample(&samples, "pikett_check_duration_seconds").expect("latency sample");
    assert_eq!(d.labels["check"], "http/web");
    assert_eq!(d.unit, "s");
    assert!(d.value > 0.0 && d.value < 2.0, "{}", d.value);
    assert!(sample(&samples, "pikett_check_cert_days_left").is_none(), "plain http has no certificate");
}

#[tokio::test]
async fn wrong_status_is_critical() {
    let addr = http_server().await;
    let mut p = probe(&http_check(&format!("http://{addr}/error"), ""));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.starts_with("HTTP 500 in ") && c.summary.contains("expected 200"), "{}", c.summary);
    assert!(sample(&samples, "pikett_check_duration_seconds").is_some(), "latency is measured for any answer");
}

#[tokio::test]
async fn expected_non_200_status_is_ok() {
    let addr = http_server().await;
    let mut p = probe(&http_check(&format!("http://{addr}/teapot"), "expect_status = 418\nexpect_body = \"stout\""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Ok, "{}", c.summary);
}

#[tokio::test]
async fn missing_body_substring_is_critical() {
    let addr = http_server().await;
    let mut p = probe(&http_check(&format!("http://{addr}/health"), "expect_body = \"healthy\""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("does not contain \"healthy\""), "{}", c.summary);
}

#[tokio::test]
async fn redirect_is_not_followed_by_default() {
    let addr = http_server().await;
    let mut p = probe(&http_check(&format!("http://{addr}/redirect"), "expect_body = \"ok\""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(
        c.summary.starts_with("HTTP 301") && c.summary.contains("redirect to /health not followed"),
        "{}",
        c.summary
    );

    let mut p = probe(&http_check(&format!("http://{addr}/redirect"), "expect_status = 301"));
    assert_eq!(poll(&mut p).await.0.state, State::Ok);

    let mut p = probe(&http_check(&format!("http://{addr}/redirect"), "follow_redirects = true\nexpect_body = \"ok\""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Ok, "{}", c.summary);
}

#[tokio::test]
async fn server_that_never_answers_is_critical_at_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, reads nothing, answers nothing, holds the socket open.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut p = probe(&format!("name = \"stuck\"\nkind = \"http\"\nurl = \"http://{addr}/\"\ntimeout = \"1s\""));
    let started = Instant::now();
    let (c, samples) = poll(&mut p).await;
    let took = started.elapsed();
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("no response") && c.summary.contains("within 1s"), "{}", c.summary);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
    assert!(samples.is_empty());
}

#[tokio::test]
async fn refused_connection_is_critical() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut p = probe(&http_check(&format!("http://127.0.0.1:{port}/"), ""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.to_lowercase().contains("refused"), "{}", c.summary);
}

#[tokio::test]
async fn https_certificate_expiring_in_5_days_is_warning_with_days_left() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(5 * DAY);
    let addr = https_server(chain, key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path());
    let extra = format!("expect_body = \"ok\"\ncert_warn_days = 21\nca_file = {:?}", ca_file.to_str().unwrap());
    let mut p = probe(&http_check(&format!("https://127.0.0.1:{}/health", addr.port()), &extra));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Warning, "{}", c.summary);
    assert!(c.summary.starts_with("HTTP 200"), "{}", c.summary);
    assert!(c.summary.contains("in 5.0 days") || c.summary.contains("in 4.9 days"), "{}", c.summary);
    let days = sample(&samples, "pikett_check_cert_days_left").expect("days-left sample");
    assert_eq!(days.unit, "d");
    assert_eq!(days.labels["check"], "http/web");
    assert!((4.9..=5.0).contains(&days.value), "{}", days.value);

    // With a lower threshold the same certificate is fine.
    let extra = format!("cert_warn_days = 3\nca_file = {:?}", ca_file.to_str().unwrap());
    let mut p = probe(&http_check(&format!("https://localhost:{}/", addr.port()), &extra));
    let (c, _) = poll(&mut p).await;
    // localhost may resolve to ::1 first; the server listens on 127.0.0.1 only and reqwest falls back.
    assert_eq!(c.state, State::Ok, "{}", c.summary);
}

#[tokio::test]
async fn https_with_untrusted_certificate_is_critical() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(90 * DAY);
    let addr = https_server(chain, key).await;
    let mut p = probe(&http_check(&format!("https://127.0.0.1:{}/", addr.port()), ""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("certificate"), "the summary should say the certificate is the problem: {}", c.summary);
}

#[tokio::test]
async fn https_with_expired_certificate_is_critical() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(-2 * DAY);
    let addr = https_server(chain, key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path());
    let extra = format!("ca_file = {:?}", ca_file.to_str().unwrap());
    let mut p = probe(&http_check(&format!("https://127.0.0.1:{}/", addr.port()), &extra));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.to_lowercase().contains("expired"), "{}", c.summary);
}
