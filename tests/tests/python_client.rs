//! A foreign client in another language: Python's grpcio (from PyPI), with stubs generated
//! from the `.proto` files alone, streams as an agent, is refused when it forgets a check's
//! status, reads its host and fault back, and finds the standard health and reflection
//! services.

use std::path::{Path, PathBuf};
use std::process::Command;

use pikett_tests::*;

/// A virtual environment with grpcio, made once per machine under the target directory.
fn python_with_grpcio() -> PathBuf {
    let venv = workspace_root().join("target/python-grpcio");
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if !ready.exists() {
        let made = Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
        assert!(made.success(), "python3 -m venv failed (Debian package python3-venv)");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "grpcio", "grpcio-tools", "grpcio-health-checking", "grpcio-reflection"])
            .status()
            .expect("pip install");
        assert!(installed.success(), "pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection failed");
        std::fs::write(&ready, "").expect("mark venv");
    }
    python
}

fn generate_stubs(python: &Path, out: &Path) {
    let protos = workspace_root().join("proto/proto");
    let files: Vec<PathBuf> = std::fs::read_dir(protos.join("pikett/v1"))
        .expect("read proto dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    let status = Command::new(python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", protos.display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&files)
        .status()
        .expect("grpc_tools.protoc");
    assert!(status.success(), "protoc for Python failed");
}

#[test]
fn a_python_grpcio_client_streams_is_held_to_the_contract_and_reads_back() {
    let python = python_with_grpcio();
    let dir = tempfile::tempdir().expect("tempdir");
    let stubs = dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).expect("stubs dir");
    generate_stubs(&python, &stubs);

    let pki = Pki::new(dir.path());
    pki.agent_cert("foreign-01");
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let mut proc = collector.start();

    let script = workspace_root().join("tests/python/foreign_agent.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&stubs)
        .arg(format!("localhost:{}", collector.grpc_port))
        .args([pki.path("ca.pem"), pki.path("foreign-01.pem"), pki.path("foreign-01.key")])
        .arg("foreign-01")
        .output()
        .expect("run foreign_agent.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "foreign_agent.py failed:\n{}\n{stdout}\ncollector log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        proc.log_text()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    eprintln!("{seen:#}");

    assert_eq!(seen["welcome_protocol_version"], 2, "{seen}");
    assert_eq!(seen["acks"], serde_json::json!([1, 2]), "both batches acknowledged: {seen}");
    assert!(seen["stream_error"].is_null(), "{seen}");

    assert_eq!(seen["unspecified_acks"], serde_json::json!([]), "a result without status was stored: {seen}");
    assert_eq!(seen["unspecified_error"][0], "INVALID_ARGUMENT", "{seen}");
    let why = seen["unspecified_error"][1].as_str().unwrap_or_default();
    assert!(why.contains("command/foreign") && why.contains("status"), "the refusal names the check: {why}");

    assert!(seen["hosts"].as_array().is_some_and(|h| h.iter().any(|h| h == "foreign-01")), "{seen}");
    let faults = seen["faults"].as_array().cloned().unwrap_or_default();
    assert!(
        faults.iter().any(|f| f["check"] == "command/foreign" && f["severity"] == "critical"),
        "the foreign client's CRITICAL opened a fault: {seen}"
    );

    for service in ["", "pikett.v1.Ingest", "pikett.v1.Admin"] {
        assert_eq!(seen["health"][service], "SERVING", "health of {service:?}: {seen}");
    }
    let services: Vec<&str> =
        seen["reflection_services"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
    for s in
        ["pikett.v1.Ingest", "pikett.v1.Admin", "pikett.v1.Reports", "pikett.v1.Incidents", "grpc.health.v1.Health"]
    {
        assert!(services.contains(&s), "reflection lists {s}: {services:?}");
    }

    // The sample arrived with the host label, under the prefix for names not pikett_-made.
    let metrics = http_get(collector.http_port, "/metrics").map(|(_, body)| body).unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pikett_agent_foreign_inlet_temperature{") && l.contains("host=\"foreign-01\"")),
        "sample exposed on /metrics:\n{}",
        metrics.lines().filter(|l| l.contains("foreign")).collect::<Vec<_>>().join("\n")
    );
    proc.sigterm(std::time::Duration::from_secs(10));
}
