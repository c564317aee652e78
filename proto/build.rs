//! Generates the gRPC code from `proto/pikett/v1/*.proto`. Uses the vendored
//! `protoc` unless `PROTOC` is set, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=proto");
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("pikett_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptor)
        // A sample's labels in key order: the collector's latest-value table and remote
        // write need them sorted, and a small ordered map costs no hashing per label.
        .btree_map(".pikett.v1.Sample.labels")
        .compile_protos(
            &[
                "proto/pikett/v1/ingest.proto",
                "proto/pikett/v1/admin.proto",
                "proto/pikett/v1/reports.proto",
                "proto/pikett/v1/incidents.proto",
                "proto/pikett/v1/enroll.proto",
            ],
            &["proto"],
        )?;
    // The collector's side of the ingest stream: the same messages, but a batch is read into
    // `received::ReceivedBatch` (its bytes kept, its samples read in place) instead of
    // `v1::Batch`. Every other type is the one generated above.
    let rx = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("rx");
    std::fs::create_dir_all(&rx)?;
    let mut config = tonic_prost_build::configure().out_dir(&rx).build_client(false).build_server(true);
    for name in [
        "AgentStatus",
        "CollectorMessage",
        "Hello",
        "Welcome",
        "Ack",
        "CheckState",
        "CheckStatus",
        "CheckResult",
        "Sample",
        "Event",
        "Inventory",
    ] {
        config = config.extern_path(format!(".pikett.v1.{name}"), format!("crate::v1::{name}"));
    }
    config
        .extern_path(".pikett.v1.Batch", "crate::received::ReceivedBatch")
        .compile_protos(&["proto/pikett/v1/ingest.proto"], &["proto"])?;
    Ok(())
}
