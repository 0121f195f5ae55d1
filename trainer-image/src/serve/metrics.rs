//! The server's Prometheus metrics (text exposition format 0.0.4): requests by endpoint and
//! status, generated and prompt tokens, request latency and batch size histograms, requests
//! cancelled by their client, and connections (open, the cap, closed by the server and why,
//! accept errors).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Latency buckets in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Batch size buckets.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    generated_tokens: u64,
    prompt_tokens: u64,
    batches: Histogram,
    cancelled: u64,
    connections_open: u64,
    connection_cap: u64,
    connections_closed: BTreeMap<&'static str, u64>,
    accept_errors: u64,
}

/// The registry; cheap to update from handlers and the worker.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                generated_tokens: 0,
                prompt_tokens: 0,
                batches: Histogram::new(BATCH_BUCKETS),
                cancelled: 0,
                connections_open: 0,
                connection_cap: 0,
                connections_closed: BTreeMap::new(),
                accept_errors: 0,
            }),
        }
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// A request to `endpoint` ended with `status` after `seconds`.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.with(|m| {
            *m.requests.entry((endpoint.to_owned(), status)).or_default() += 1;
            m.latency
                .entry(endpoint.to_owned())
                .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
                .observe(seconds);
        });
    }

    /// A generation finished with these token counts.
    pub fn tokens(&self, prompt: usize, generated: usize) {
        self.with(|m| {
            m.prompt_tokens += prompt as u64;
            m.generated_tokens += generated as u64;
        });
    }

    /// The worker decoded a batch of `size` requests.
    pub fn batch(&self, size: usize) {
        self.with(|m| m.batches.observe(size as f64));
    }

    /// A request was dropped because its client went away (queued or mid-generation).
    pub fn cancelled(&self) {
        self.with(|m| m.cancelled += 1);
    }

    /// The connection cap in force.
    pub fn connection_cap(&self, cap: usize) {
        self.with(|m| m.connection_cap = cap as u64);
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.with(|m| m.connections_open += 1);
    }

    /// A connection ended (whoever closed it).
    pub fn connection_ended(&self) {
        self.with(|m| m.connections_open = m.connections_open.saturating_sub(1));
    }

    /// The server closed a connection itself, for `reason` (a [`super::conn::Close`] label).
    pub fn connection_closed(&self, reason: &'static str) {
        self.with(|m| *m.connections_closed.entry(reason).or_default() += 1);
    }

    /// `accept()` failed for a reason other than the client's (descriptors, memory).
    pub fn accept_error(&self) {
        self.with(|m| m.accept_errors += 1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            out.push_str("# HELP llamaduo_serve_requests_total Requests by endpoint and HTTP status.\n# TYPE llamaduo_serve_requests_total counter\n");
            for ((e, s), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "llamaduo_serve_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}"
                );
            }
            let _ = write!(
                out,
                "# HELP llamaduo_serve_generated_tokens_total Tokens generated.\n# TYPE llamaduo_serve_generated_tokens_total counter\nllamaduo_serve_generated_tokens_total {}\n",
                m.generated_tokens
            );
            let _ = write!(
                out,
                "# HELP llamaduo_serve_prompt_tokens_total Prompt tokens processed.\n# TYPE llamaduo_serve_prompt_tokens_total counter\nllamaduo_serve_prompt_tokens_total {}\n",
                m.prompt_tokens
            );
            out.push_str("# HELP llamaduo_serve_request_duration_seconds Request latency by endpoint.\n# TYPE llamaduo_serve_request_duration_seconds histogram\n");
            for (e, h) in &m.latency {
                h.render(
                    &mut out,
                    "llamaduo_serve_request_duration_seconds",
                    &format!("endpoint=\"{e}\""),
                );
            }
            out.push_str("# HELP llamaduo_serve_batch_size Requests decoded together per batch.\n# TYPE llamaduo_serve_batch_size histogram\n");
            m.batches.render(&mut out, "llamaduo_serve_batch_size", "");
            let _ = write!(
                out,
                "# HELP llamaduo_serve_cancelled_total Requests dropped because their client disconnected.\n# TYPE llamaduo_serve_cancelled_total counter\nllamaduo_serve_cancelled_total {}\n",
                m.cancelled
            );
            let _ = write!(
                out,
                "# HELP llamaduo_serve_connections Open client connections.\n# TYPE llamaduo_serve_connections gauge\nllamaduo_serve_connections {}\n",
                m.connections_open
            );
            let _ = write!(
                out,
                "# HELP llamaduo_serve_max_connections The connection cap (--max-connections).\n# TYPE llamaduo_serve_max_connections gauge\nllamaduo_serve_max_connections {}\n",
                m.connection_cap
            );
            out.push_str("# HELP llamaduo_serve_connections_closed_total Connections the server closed, by reason: header_timeout, idle_timeout, evicted (at the cap, for a new one), drained (at shutdown).\n# TYPE llamaduo_serve_connections_closed_total counter\n");
            for (reason, n) in &m.connections_closed {
                let _ = writeln!(
                    out,
                    "llamaduo_serve_connections_closed_total{{reason=\"{reason}\"}} {n}"
                );
            }
            let _ = write!(
                out,
                "# HELP llamaduo_serve_accept_errors_total Failed accepts other than a client's (e.g. out of descriptors).\n# TYPE llamaduo_serve_accept_errors_total counter\nllamaduo_serve_accept_errors_total {}\n",
                m.accept_errors
            );
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200, 0.2);
        m.request("/v1/chat/completions", 400, 0.001);
        m.tokens(10, 7);
        m.batch(3);
        let text = m.render();
        assert!(text.contains(
            "llamaduo_serve_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"} 1"
        ));
        assert!(text.contains("llamaduo_serve_generated_tokens_total 7"));
        assert!(text.contains(
            "llamaduo_serve_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.25\"} 2"
        ));
        assert!(text.contains(
            "llamaduo_serve_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.1\"} 1"
        ));
        assert!(text.contains("llamaduo_serve_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("llamaduo_serve_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("llamaduo_serve_batch_size_count 1"));
    }

    #[test]
    fn renders_connections() {
        let m = Metrics::default();
        m.connection_cap(100);
        m.connection_opened();
        m.connection_opened();
        m.connection_ended();
        m.connection_closed("evicted");
        m.connection_closed("evicted");
        m.cancelled();
        let text = m.render();
        assert!(text.contains("llamaduo_serve_connections 1\n"), "{text}");
        assert!(text.contains("llamaduo_serve_max_connections 100\n"));
        assert!(text.contains("llamaduo_serve_connections_closed_total{reason=\"evicted\"} 2\n"));
        assert!(text.contains("llamaduo_serve_cancelled_total 1\n"));
        assert!(text.contains("llamaduo_serve_accept_errors_total 0\n"));
    }
}
