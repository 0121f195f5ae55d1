//! The server's Prometheus metrics (text exposition format 0.0.4): requests by endpoint and
//! status, generated and prompt tokens, request latency and batch size histograms.

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
}
