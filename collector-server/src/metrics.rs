//! Prometheus metrics of the collector, served as plain text on an
//! optional separate port (`--metrics-listen`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Counters and gauges, shared by the services.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Artifact bytes received and stored.
    pub bytes_received: AtomicU64,
    /// Chunks refused for a SHA-256 mismatch.
    pub chunks_rejected: AtomicU64,
    /// Artifacts whose stored and decoded digests matched.
    pub artifacts_verified: AtomicU64,
    /// Artifacts whose digests did not match.
    pub artifact_verification_failures: AtomicU64,
    /// Captures committed complete.
    pub captures_completed: AtomicU64,
    /// Commits refused because the manifest did not match.
    pub captures_failed: AtomicU64,
    /// Upload streams answered UNAVAILABLE because the store failed (the
    /// agent retries them).
    pub store_unavailable: AtomicU64,
    /// Upload streams in progress.
    pub active_streams: AtomicI64,
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "ircap_bytes_received_total",
                "Artifact bytes received and stored durably.",
                &self.bytes_received,
            ),
            (
                "ircap_chunks_rejected_total",
                "Chunks refused because their SHA-256 did not match.",
                &self.chunks_rejected,
            ),
            (
                "ircap_artifacts_verified_total",
                "Artifacts whose stored and decoded SHA-256 matched the agent's.",
                &self.artifacts_verified,
            ),
            (
                "ircap_verification_failures_total",
                "Artifacts whose digests did not match the agent's.",
                &self.artifact_verification_failures,
            ),
            (
                "ircap_captures_completed_total",
                "Captures committed complete.",
                &self.captures_completed,
            ),
            (
                "ircap_captures_failed_total",
                "Commits refused because the manifest did not match what was received.",
                &self.captures_failed,
            ),
            (
                "ircap_store_unavailable_total",
                "Upload streams answered UNAVAILABLE because the store (disk or S3) failed; agents retry them.",
                &self.store_unavailable,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP ircap_active_streams Upload streams in progress.\n# TYPE ircap_active_streams gauge\nircap_active_streams {}\n",
            self.active_streams.load(Ordering::Relaxed)
        ));
        out
    }
}

/// Counts a stream as active until dropped.
pub struct StreamGauge(Arc<Metrics>);

impl StreamGauge {
    /// Marks one more stream active.
    #[must_use]
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.active_streams.fetch_add(1, Ordering::Relaxed);
        Self(metrics)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers `GET /metrics` over HTTP/1.1 on `listener` until the task is
/// dropped; anything else gets 404.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            // Read the request head (at most 4 KiB, 5 s).
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 4096 {
                match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    _ => return,
                }
            }
            let request = String::from_utf8_lossy(&head).into_owned();
            let (status, body) = if request.starts_with("GET /metrics ") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauge() {
        let m = Arc::new(Metrics::default());
        inc(&m.captures_completed);
        m.bytes_received.fetch_add(42, Ordering::Relaxed);
        let g = StreamGauge::new(Arc::clone(&m));
        let text = m.render();
        assert!(text.contains("ircap_captures_completed_total 1\n"));
        assert!(text.contains("ircap_bytes_received_total 42\n"));
        assert!(text.contains("ircap_active_streams 1\n"));
        drop(g);
        assert!(m.render().contains("ircap_active_streams 0\n"));
    }
}
