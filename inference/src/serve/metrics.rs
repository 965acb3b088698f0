//! Prometheus text-format metrics (exposition format 0.0.4), kept by hand: a few
//! counters and histograms do not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request-latency and inference-time buckets.
const SECONDS_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the batch-size buckets (images).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self.bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{label}=\"{value}\",le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (route, status) -> requests.
    requests: BTreeMap<(String, u16), u64>,
    /// route -> latency in seconds.
    latency: BTreeMap<String, Histogram>,
    /// model -> images per batch run.
    batch_size: BTreeMap<String, Histogram>,
    /// model -> seconds per batch run.
    inference: BTreeMap<String, Histogram>,
}

/// The server's counters and histograms.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

/// Gauges read at render time.
pub(crate) struct Gauges<'a> {
    /// Requests admitted and not yet answered.
    pub pending: usize,
    /// Per model: requests waiting for its batcher.
    pub queued: Vec<(&'a str, usize)>,
}

/// Label values are route patterns and model names; quote what the format requires anyway.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (plain inserts).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        let mut m = self.lock();
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&SECONDS_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_batch(&self, model: &str, images: usize, elapsed: Duration) {
        let mut m = self.lock();
        m.batch_size.entry(model.to_string()).or_insert_with(|| Histogram::new(&BATCH_BUCKETS)).observe(images as f64);
        m.inference
            .entry(model.to_string())
            .or_insert_with(|| Histogram::new(&SECONDS_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    pub fn render(&self, gauges: &Gauges<'_>) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP digits_http_requests_total HTTP requests answered, by route pattern and status.\n");
        out.push_str("# TYPE digits_http_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(out, "digits_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
        }
        out.push_str("# HELP digits_http_request_duration_seconds Time from request to response, by route pattern.\n");
        out.push_str("# TYPE digits_http_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.render(&mut out, "digits_http_request_duration_seconds", "route", &escape(route));
        }
        out.push_str("# HELP digits_batch_size Images per batch a model ran (after dynamic batching).\n");
        out.push_str("# TYPE digits_batch_size histogram\n");
        for (model, h) in &m.batch_size {
            h.render(&mut out, "digits_batch_size", "model", &escape(model));
        }
        out.push_str("# HELP digits_model_inference_seconds Time of one batch in the model's runtime.\n");
        out.push_str("# TYPE digits_model_inference_seconds histogram\n");
        for (model, h) in &m.inference {
            h.render(&mut out, "digits_model_inference_seconds", "model", &escape(model));
        }
        out.push_str("# HELP digits_queue_depth Requests admitted and not yet answered.\n");
        out.push_str("# TYPE digits_queue_depth gauge\n");
        let _ = writeln!(out, "digits_queue_depth {}", gauges.pending);
        out.push_str("# HELP digits_model_queue_depth Requests waiting for a model's next batch.\n");
        out.push_str("# TYPE digits_model_queue_depth gauge\n");
        for (model, n) in &gauges.queued {
            let _ = writeln!(out, "digits_model_queue_depth{{model=\"{}\"}} {n}", escape(model));
        }
        out
    }
}
