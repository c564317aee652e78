//! The sequence rules of the ingest stream (ingest.proto), against the real collector over
//! mutual TLS: a batch numbered 0, a second hello and a step backwards on one stream are
//! refused with a status that says why, and nothing of them is stored.

use std::time::Duration;

use pikett_agent::config::TlsConfig;
use pikett_proto::v1 as pb;
use pikett_proto::v1::ingest_client::IngestClient;
use pikett_tests::*;
use tokio::sync::mpsc;

fn hello(host: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            protocol_version: pikett_proto::PROTOCOL_VERSION,
            host_id: host.into(),
            customer: "acme".into(),
            agent_version: "test".into(),
            capabilities: vec![],
            min_interval_ms: 1000,
            spool_epoch: 42,
        })),
    }
}

fn batch(seq: u64) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(pb::agent_message::Body::Batch(pb::Batch { seq, ..Default::default() })) }
}

/// Sends `messages` on one stream; returns the acknowledged sequence numbers and the status
/// the stream ended with (if it ended with an error).
async fn stream(
    collector: &CollectorSetup,
    pki: &Pki,
    host: &str,
    messages: Vec<pb::AgentMessage>,
) -> (Vec<u64>, Option<tonic::Status>) {
    let tls = TlsConfig {
        ca_file: Some(pki.path("ca.pem").into()),
        cert_file: Some(pki.path(&format!("{host}.pem")).into()),
        key_file: Some(pki.path(&format!("{host}.key")).into()),
        server_name: None,
    };
    let channel = pikett_agent::uplink::connect(&collector.url(), Some(&tls)).await.expect("connect");
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let mut inbound = IngestClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut acks = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), inbound.message()).await {
            Ok(Ok(Some(pb::CollectorMessage { body: Some(pb::collector_message::Body::Ack(a)) }))) => acks.push(a.seq),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return (acks, None),
            Ok(Err(status)) => return (acks, Some(status)),
            // Still open and quiet: everything sent was answered.
            Err(_) => return (acks, None),
        }
    }
}

#[test]
fn seq_zero_a_second_hello_and_a_step_back_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let _c = collector.start();
    for host in ["rules-01", "rules-02", "rules-03", "rules-04"] {
        pki.agent_cert(host);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (acks, status) = stream(&collector, &pki, "rules-01", vec![hello("rules-01"), batch(0)]).await;
        let status = status.expect("seq 0 was not refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("sequence number 0"), "{status:?}");
        assert!(acks.is_empty());

        let (acks, status) =
            stream(&collector, &pki, "rules-02", vec![hello("rules-02"), batch(1), hello("rules-02")]).await;
        let status = status.expect("a second hello was not refused");
        assert!(status.message().contains("second hello"), "{status:?}");
        assert_eq!(acks, vec![1], "the batch before the second hello is still acknowledged");

        let (acks, status) =
            stream(&collector, &pki, "rules-03", vec![hello("rules-03"), batch(5), batch(6), batch(3)]).await;
        let status = status.expect("a step backwards was not refused");
        assert!(status.message().contains("batch 3 after batch 6"), "{status:?}");
        assert_eq!(acks, vec![5, 6]);

        // A gap is allowed (the agent dropped batches), and a resend on a new stream is acked.
        let (acks, status) = stream(&collector, &pki, "rules-04", vec![hello("rules-04"), batch(1), batch(4)]).await;
        assert!(status.is_none(), "{status:?}");
        assert_eq!(acks, vec![1, 4]);
        let (acks, status) = stream(&collector, &pki, "rules-04", vec![hello("rules-04"), batch(4)]).await;
        assert!(status.is_none(), "{status:?}");
        assert_eq!(acks, vec![4]);
    });
    let hosts = json_lines(&collector.pikett(&["hosts", "--output", "json"], &pki.path("ca.pem")).stdout);
    let batches = |id: &str| hosts.iter().find(|h| h["host_id"] == id).map_or(0, |h| h["batches"].as_u64().unwrap());
    assert_eq!(batches("rules-01"), 0, "the batch numbered 0 was stored");
    assert_eq!(batches("rules-03"), 2, "the step backwards was stored");
    assert_eq!(batches("rules-04"), 2, "the resend was stored twice");
    let (_, metrics) = http_get(collector.http_port, "/metrics").expect("/metrics");
    assert!(metrics.contains("pikett_ingest_sequence_gaps_total 1"), "{metrics}");
    assert!(metrics.contains("reason=\"seq_backwards\""), "the refusal was not counted");
}
