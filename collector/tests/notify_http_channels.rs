//! SMS, voice and webhook channels against real HTTP receivers on 127.0.0.1.

#[path = "notify_support/mod.rs"]
mod common;

use std::time::Duration;

use common::{Gateway, dead_url, notification};
use pikett_collector::notify::{
    Channel, ChannelKind, ChannelsConfig, SmsChannel, SmsConfig, VoiceChannel, VoiceConfig, WebhookChannel,
    WebhookConfig, WebhookFormat,
};

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn sms_fails_over_to_second_gateway_with_same_idempotency_key() {
    provider();
    let a = Gateway::start(500).await;
    let b = Gateway::start(200).await;
    let sms = SmsChannel::new(SmsConfig::new(vec![a.url.clone(), b.url.clone()])).unwrap();
    let n = notification("F42-primary-alice-sms-0", ChannelKind::Sms, "+4915100000001");

    let receipt = sms.send(&n).await.unwrap();

    assert_eq!(receipt.endpoint, b.redacted_url());
    assert_eq!(a.count(), 1);
    assert_eq!(b.count(), 1);
    let (ra, rb) = (&a.requests()[0], &b.requests()[0]);
    assert_eq!(ra.header("idempotency-key"), "F42-primary-alice-sms-0");
    assert_eq!(rb.header("idempotency-key"), "F42-primary-alice-sms-0");
    assert_eq!(rb.header("content-type"), "application/json");
    let body = rb.json();
    assert_eq!(body["to"], "+4915100000001");
    let text = body["text"].as_str().unwrap();
    for part in ["CRITICAL", "web1", "http/shop-frontend", "\"Internal Server Error\"", "F42", "pikett ack F42"] {
        assert!(text.contains(part), "{part:?} missing in {text:?}");
    }
}

#[tokio::test]
async fn unhealthy_gateway_is_skipped_on_the_next_send() {
    provider();
    let a = Gateway::start(503).await;
    let b = Gateway::start(200).await;
    let sms = SmsChannel::new(SmsConfig::new(vec![a.url.clone(), b.url.clone()])).unwrap();

    sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.unwrap();
    assert_eq!(sms.unhealthy_gateways(), vec![a.url.clone()]);
    sms.send(&notification("n2", ChannelKind::Sms, "+491")).await.unwrap();

    assert_eq!(a.count(), 1, "the failed gateway was asked again");
    assert_eq!(b.count(), 2);
}

#[tokio::test]
async fn unhealthy_gateway_is_tried_again_after_unhealthy_for() {
    provider();
    let a = Gateway::start(500).await;
    let b = Gateway::start(200).await;
    let mut cfg = SmsConfig::new(vec![a.url.clone(), b.url.clone()]);
    cfg.unhealthy_for = Duration::from_millis(100);
    let sms = SmsChannel::new(cfg).unwrap();

    sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.unwrap();
    a.set_status(200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let receipt = sms.send(&notification("n2", ChannelKind::Sms, "+491")).await.unwrap();

    assert_eq!(receipt.endpoint, a.redacted_url());
    assert_eq!(a.count(), 2);
    assert_eq!(b.count(), 1);
}

#[tokio::test]
async fn all_gateways_unhealthy_are_still_tried() {
    provider();
    let a = Gateway::start(500).await;
    let b = Gateway::start(500).await;
    let sms = SmsChannel::new(SmsConfig::new(vec![a.url.clone(), b.url.clone()])).unwrap();
    assert!(sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.is_err());
    b.set_status(200);

    let receipt = sms.send(&notification("n2", ChannelKind::Sms, "+491")).await.unwrap();

    assert_eq!(receipt.endpoint, b.redacted_url());
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn all_gateways_down_is_retryable_and_names_each_url() {
    provider();
    let (u1, u2) = (dead_url(), dead_url());
    let sms = SmsChannel::new(SmsConfig::new(vec![u1.clone(), u2.clone()])).unwrap();

    let err = sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.unwrap_err();

    assert!(err.is_retryable(), "{err}");
    let msg = err.to_string();
    // Each gateway is named by scheme, host and port (paths may hold secrets).
    let origin = |u: &str| u.trim_end_matches("/send").to_string();
    assert!(msg.contains(&origin(&u1)) && msg.contains(&origin(&u2)), "{msg}");
    assert!(!msg.contains("/send"), "a gateway path reached the message: {msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
}

#[tokio::test]
async fn client_errors_are_permanent_and_keep_the_gateway_healthy() {
    provider();
    let a = Gateway::start(400).await;
    let sms = SmsChannel::new(SmsConfig::new(vec![a.url.clone()])).unwrap();

    let err = sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.unwrap_err();

    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("HTTP 400"), "{err}");
    assert!(sms.unhealthy_gateways().is_empty());
}

#[tokio::test]
async fn too_many_requests_is_retryable() {
    provider();
    let a = Gateway::start(429).await;
    let sms = SmsChannel::new(SmsConfig::new(vec![a.url.clone()])).unwrap();
    let err = sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn headers_are_templated_with_secrets_from_files() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("sms.token");
    std::fs::write(&token, "tok-123\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let a = Gateway::start(200).await;
    let cfg: SmsConfig = toml::from_str(&format!(
        r#"gateways = ["{}"]
           headers = {{ Authorization = "Bearer {{{{secret:{}}}}}", X-Fault = "{{{{fault_id}}}}" }}"#,
        a.url,
        token.display()
    ))
    .unwrap();
    let sms = SmsChannel::new(cfg).unwrap();

    sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.unwrap();

    let r = &a.requests()[0];
    assert_eq!(r.header("authorization"), "Bearer tok-123");
    assert_eq!(r.header("x-fault"), "F42");
}

#[tokio::test]
async fn missing_secret_file_is_a_config_error_naming_it() {
    let cfg: SmsConfig = toml::from_str(
        r#"gateways = ["http://127.0.0.1:9/send"]
           headers = { Authorization = "Bearer {{secret:/nonexistent/sms.token}}" }"#,
    )
    .unwrap();
    let err = SmsChannel::new(cfg).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/sms.token"), "{err}");
    assert!(err.contains("headers.Authorization"), "{err}");
}

#[tokio::test]
async fn plain_text_body_is_not_json_escaped() {
    provider();
    let a = Gateway::start(200).await;
    let mut cfg = SmsConfig::new(vec![a.url.clone()]);
    cfg.body = "to={{to}}&msg={{summary}}".into();
    let sms = SmsChannel::new(cfg).unwrap();
    sms.send(&notification("n1", ChannelKind::Sms, "+491")).await.unwrap();
    let r = &a.requests()[0];
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(&r.body[..], b"to=+491&msg=HTTP 500 \"Internal Server Error\"");
}

#[tokio::test]
async fn voice_gateway_gets_the_call_with_idempotency_key() {
    provider();
    let v = Gateway::start(202).await;
    let voice = VoiceChannel::new(VoiceConfig::new(v.url.clone())).unwrap();
    let mut n = notification("F42-primary-alice-voice-0", ChannelKind::Voice, "+4915100000001");
    n.emergency = true;

    let receipt = voice.send(&n).await.unwrap();

    assert_eq!(receipt.channel, ChannelKind::Voice);
    assert_eq!(receipt.detail, "HTTP 202 Accepted");
    let r = &v.requests()[0];
    assert_eq!(r.header("idempotency-key"), "F42-primary-alice-voice-0");
    let body = r.json();
    assert_eq!(body["to"], "+4915100000001");
    assert!(body["text"].as_str().unwrap().starts_with("[Notfall] CRITICAL web1"));
}

#[tokio::test]
async fn voice_gateway_error_names_url_and_status() {
    provider();
    let v = Gateway::start(502).await;
    let voice = VoiceChannel::new(VoiceConfig::new(v.url.clone())).unwrap();
    let err = voice.send(&notification("n1", ChannelKind::Voice, "+491")).await.unwrap_err();
    assert!(err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains(&v.redacted_url()) && msg.contains("502"), "{msg}");
}

#[tokio::test]
async fn webhook_posts_an_alertmanager_payload() {
    provider();
    let w = Gateway::start(200).await;
    let hook = WebhookChannel::new(WebhookConfig::new(w.url.clone(), WebhookFormat::Alertmanager)).unwrap();
    let n = notification("F42-webhook-0", ChannelKind::Webhook, "");

    hook.send(&n).await.unwrap();

    let r = &w.requests()[0];
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("idempotency-key"), "F42-webhook-0");
    let v = r.json();
    assert_eq!(v["version"], "4");
    assert_eq!(v["status"], "firing");
    assert!(v["groupKey"].is_string());
    assert!(v["commonLabels"].is_object());
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["alertname"], "http/shop-frontend");
    assert_eq!(a["labels"]["host"], "web1");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["customer"], "acme");
    assert_eq!(a["annotations"]["summary"], "HTTP 500 \"Internal Server Error\"");
    assert_eq!(a["startsAt"], "2026-11-23T02:58:00Z");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
}

#[tokio::test]
async fn webhook_posts_the_pikett_payload_by_default() {
    provider();
    let w = Gateway::start(200).await;
    let cfg: WebhookConfig = toml::from_str(&format!("url = \"{}\"", w.url)).unwrap();
    let hook = WebhookChannel::new(cfg).unwrap();
    hook.send(&notification("n1", ChannelKind::Webhook, "")).await.unwrap();
    let v = w.requests()[0].json();
    assert_eq!(v["version"], "1");
    assert_eq!(v["fault_id"], "F42");
    assert_eq!(v["kind"], "alarm");
}

#[tokio::test]
async fn channels_section_builds_every_configured_channel() {
    provider();
    let cfg: ChannelsConfig = toml::from_str(
        r#"
        [sms]
        gateways = ["https://sms-a.example.net/send", "https://sms-b.example.net/send"]
        body = '{"to": "{{to}}", "text": "{{text}}"}'

        [voice]
        url = "https://voice.example.net/call"
        body = '{"to": "{{to}}", "text": "{{text}}"}'

        [email]
        smtp = "smtp.example.net:587"
        from = "pikett@example.net"
        starttls = true

        [webhook]
        url = "https://tickets.example.net/hook"
        "#,
    )
    .unwrap();
    let map = cfg.build().unwrap();
    let mut kinds: Vec<_> = map.keys().copied().collect();
    kinds.sort();
    assert_eq!(kinds, vec![ChannelKind::Sms, ChannelKind::Voice, ChannelKind::Email, ChannelKind::Webhook]);
    for (k, c) in &map {
        assert_eq!(c.kind(), *k);
    }
}

#[tokio::test]
async fn sms_over_https_with_a_gateway_ca_file() {
    provider();
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::test_pki(pki.path());
    let g = Gateway::start_tls(200, &cert, &key).await;
    let mut cfg = SmsConfig::new(vec![g.url.clone()]);
    cfg.ca_file = Some(ca);
    let sms = SmsChannel::new(cfg).unwrap();

    let receipt = sms.send(&notification("tls-1", ChannelKind::Sms, "+491")).await.unwrap();

    assert!(receipt.endpoint.starts_with("https://127.0.0.1:"));
    assert_eq!(g.requests()[0].header("idempotency-key"), "tls-1");
    assert_eq!(g.requests()[0].json()["to"], "+491");
}

#[tokio::test]
async fn https_gateway_with_an_untrusted_certificate_is_refused() {
    provider();
    let pki = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = common::test_pki(pki.path());
    let g = Gateway::start_tls(200, &cert, &key).await;
    let sms = SmsChannel::new(SmsConfig::new(vec![g.url.clone()])).unwrap();

    let err = sms.send(&notification("tls-2", ChannelKind::Sms, "+491")).await.unwrap_err();

    let msg = err.to_string();
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert!(msg.contains("needs ca_file"), "{msg}");
    assert_eq!(g.count(), 0);
}

#[tokio::test]
async fn unreadable_ca_file_is_a_config_error() {
    let mut cfg = SmsConfig::new(vec!["https://sms.example.net/send".into()]);
    cfg.ca_file = Some("/nonexistent/ca.pem".into());
    let err = SmsChannel::new(cfg).err().unwrap().to_string();
    assert!(err.contains("ca_file") && err.contains("/nonexistent/ca.pem"), "{err}");
}
