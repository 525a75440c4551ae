//! The agent's HTTP endpoints (`--metrics ADDR`): Prometheus metrics, `/healthz` and `/readyz`
//! for the DaemonSet's probes, and `/status` (the L2 announcer's view) for `berth
//! announcements`, and `/bgp` (the BGP speaker's sessions and routes).

use async_trait::async_trait;
use berth_agent::bgp::{BgpHandle, BgpMetrics};
use berth_agent::l2::L2Handle;
use berth_announce::http::{self, Handler, Reply};
use berth_announce::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Endpoints {
    l2: Option<L2Handle>,
    metrics: Option<Arc<Metrics>>,
    bgp: Option<(BgpHandle, Arc<BgpMetrics>)>,
    serving: Arc<AtomicBool>,
}

#[async_trait]
impl Handler for Endpoints {
    async fn get(&self, path: &str) -> Reply {
        match path {
            "/metrics" => {
                // Two registries, one exposition: each one's "# EOF" line is dropped and one
                // ends the whole.
                let mut out = String::new();
                for text in [
                    self.metrics.as_ref().map(|m| m.encode()),
                    self.bgp.as_ref().map(|(_, m)| m.encode()),
                ]
                .into_iter()
                .flatten()
                {
                    out.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
                }
                out.push_str("# EOF\n");
                (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                )
            }
            "/bgp" => match &self.bgp {
                Some((h, _)) => (
                    200,
                    "application/json",
                    serde_json::to_string_pretty(&h.view()).unwrap_or_default(),
                ),
                None => (
                    200,
                    "application/json",
                    "{\"off\": \"BGP is off on this agent\"}".into(),
                ),
            },
            "/healthz" => (200, "text/plain", "ok\n".into()),
            "/readyz" => {
                if !self.serving.load(Ordering::Relaxed) {
                    return (
                        503,
                        "text/plain",
                        "not ready: the CNI socket is not served yet\n".into(),
                    );
                }
                if let Some(h) = &self.l2 {
                    let v = h.view().await;
                    let down: Vec<&str> = v
                        .announcers
                        .iter()
                        .filter(|a| a.status.as_ref().is_some_and(|s| !s.status.link_up))
                        .map(|a| a.interface.as_str())
                        .collect();
                    if !down.is_empty() {
                        return (
                            503,
                            "text/plain",
                            format!("not ready: the L2 interface {} is down\n", down.join(", ")),
                        );
                    }
                }
                (200, "text/plain", "ready\n".into())
            }
            "/status" => match &self.l2 {
                Some(h) => (
                    200,
                    "application/json",
                    serde_json::to_string_pretty(&h.view().await).unwrap_or_default(),
                ),
                None => (
                    200,
                    "application/json",
                    "{\"notMember\": \"L2 announcement is off on this agent\"}".into(),
                ),
            },
            _ => (
                404,
                "text/plain",
                "try /metrics /healthz /readyz /status /bgp\n".into(),
            ),
        }
    }
}

/// Serves the endpoints on `addr` until the returned task is dropped.
pub async fn serve(
    addr: SocketAddr,
    l2: Option<L2Handle>,
    metrics: Option<Arc<Metrics>>,
    bgp: Option<(BgpHandle, Arc<BgpMetrics>)>,
    serving: Arc<AtomicBool>,
) -> anyhow::Result<Task> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics /healthz /readyz /status /bgp");
    let h: Arc<dyn Handler> = Arc::new(Endpoints {
        l2,
        metrics,
        bgp,
        serving,
    });
    Ok(Task(tokio::spawn(http::serve(l, h))))
}

/// The server task; aborted when dropped.
pub struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
