//! Synthetic scrape targets for `bench compare`: tiny HTTP/1.1 servers, one port per target,
//! each answering any GET with [`host_series`] in the Prometheus text format, values
//! changing every second. They run in the xtask process, so their CPU is not Prometheus's;
//! they format the values and nothing else (no compression, the label part is prebuilt).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::series::{Series, host_series};

pub(crate) struct Targets {
    pub ports: Vec<u16>,
    /// Scrapes answered so far, all targets together.
    pub scrapes: Arc<AtomicU64>,
}

/// Starts `targets` servers on loopback, each exposing `series` series.
pub(crate) async fn start(targets: usize, series: usize) -> anyhow::Result<Targets> {
    let page = Arc::new(Page::new(host_series(series)));
    let scrapes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut ports = Vec::new();
    for t in 0..targets {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        let (page, scrapes) = (page.clone(), scrapes.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (page, scrapes) = (page.clone(), scrapes.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &page, t as u64, started, &scrapes).await;
                });
            }
        });
    }
    Ok(Targets { ports, scrapes })
}

/// The exposition with each series' `name{labels} ` (and its family's `# TYPE` line before
/// the first one) prebuilt.
struct Page {
    series: Vec<Series>,
    prefixes: Vec<String>,
}

impl Page {
    fn new(series: Vec<Series>) -> Page {
        let mut prefixes = Vec::with_capacity(series.len());
        let mut last_family = "";
        for s in &series {
            let mut p = String::new();
            if s.family.name != last_family {
                last_family = s.family.name;
                let kind = if s.family.counter { "counter" } else { "gauge" };
                let _ = writeln!(p, "# TYPE {last_family} {kind}");
            }
            p.push_str(s.family.name);
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let _ = write!(p, "{{{}}} ", labels.join(","));
            prefixes.push(p);
        }
        Page { series, prefixes }
    }

    fn render(&self, tick: u64, out: &mut String) {
        out.clear();
        for (s, prefix) in self.series.iter().zip(&self.prefixes) {
            out.push_str(prefix);
            let _ = writeln!(out, "{}", s.value(tick));
        }
    }
}

/// Answers the requests of one keep-alive connection (Prometheus reuses it every scrape).
async fn serve(
    mut conn: TcpStream,
    page: &Page,
    target: u64,
    started: Instant,
    scrapes: &AtomicU64,
) -> std::io::Result<()> {
    let (mut buf, mut body) = (Vec::with_capacity(1024), String::new());
    let mut chunk = [0u8; 1024];
    loop {
        // A request without a body ends at its blank line.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..end);
        // Each target at its own phase, one step per second.
        page.render(started.elapsed().as_secs() + target, &mut body);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body.as_bytes()).await?;
        scrapes.fetch_add(1, Ordering::Relaxed);
    }
}
