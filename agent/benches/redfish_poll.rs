//! One full Redfish poll against the fixture BMC with 200 ms added latency per request at max_concurrency = 2: requests and wall time, with and without `$expand`.

#[path = "../tests/redfish_support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use pikett_agent::observation::Observation;
use pikett_agent::probes::Probe;
use pikett_agent::probes::redfish::{ExpandMode, RedfishProbe};

const LATENCY: Duration = Duration::from_millis(200);
const ROUNDS: usize = 3;

async fn measure(bmc: &TestBmc, expand: ExpandMode) -> (f64, f64, f64, usize) {
    let mut cfg = bmc.config();
    cfg.expand = expand;
    cfg.max_concurrency = 2;
    cfg.timeout = Duration::from_secs(20);
    cfg.poll_timeout = Duration::from_secs(120);
    let mut probe = RedfishProbe::new(cfg, memory_state()).expect("probe");
    // The first poll logs in; steady-state polls reuse the session.
    let mut first = 0.0;
    let mut walls = Vec::new();
    let mut requests = Vec::new();
    let mut checks = 0;
    for round in 0..=ROUNDS {
        bmc.reset_seen();
        let t = Instant::now();
        let obs = probe.poll().await;
        let wall = t.elapsed().as_secs_f64();
        let n = bmc.seen().len();
        checks = obs.iter().filter(|o| matches!(o, Observation::Check(_))).count();
        if round == 0 {
            first = wall;
            println!("  first poll (with login): {n} requests, {wall:.2} s");
        } else {
            walls.push(wall);
            requests.push(n as f64);
        }
    }
    probe.shutdown().await;
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (avg(&requests), avg(&walls), first, checks)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let bmc = TestBmc::start(R750).await;
        bmc.set_latency(LATENCY);
        println!("redfish_poll: fixture {R750}, {} ms added latency per request, max_concurrency = 2", LATENCY.as_millis());
        for (label, mode) in [("with $expand", ExpandMode::Auto), ("without $expand", ExpandMode::Off)] {
            println!("{label}:");
            let (req, wall, _first, checks) = measure(&bmc, mode).await;
            println!("  steady state (mean of {ROUNDS} polls): {req:.0} requests per poll, {wall:.2} s wall time per poll, {checks} checks");
        }
    });
}
