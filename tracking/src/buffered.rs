//! Keeps a long training run going while the MLflow server is away.
//!
//! [`BufferedTracker`] wraps any [`Tracker`] (in practice a [`crate::RestStore`]).
//! Params, metrics and tags that cannot be delivered because the server is
//! unreachable (connection refused, timeout, 5xx, 429) are queued in memory and
//! the logging call returns `Ok`, after one warning on stderr per outage. The
//! queue is retried, oldest first, by later calls (with exponential backoff, so
//! a dead server does not slow every call down), by [`Tracker::flush`] and when a
//! run ends; ending waits up to [`BufferOptions::flush_timeout`] and otherwise
//! fails with [`TrackingError::Unsent`], naming how many values are still queued.
//!
//! Guarantees: values reach the server in the order they were logged, each once
//! (a queued value keeps its original timestamp, and MLflow ignores an exact
//! duplicate metric row, so even a request that timed out after the server
//! committed it is safe to repeat). Errors that retrying cannot fix (4xx, invalid
//! names) are returned by the call that logged the value, never queued - keys and
//! lengths are checked before queueing. The one exception is a value the server
//! refuses only once it is back (e.g. a param changed while queued): it is dropped
//! with a warning and reported by the next `flush()`/end as
//! [`TrackingError::Rejected`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Result, TrackingError};
use crate::rest::{MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_TAGS_PER_BATCH};
use crate::validate::{check_metrics, check_params, check_tags};
use crate::{validate, MetricPoint, RunHandle, RunInfo, RunStatus, Tracker};

/// Where warnings go: a line of text, without trailing newline.
pub type WarnFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Retry policy of a [`BufferedTracker`].
#[derive(Clone)]
pub struct BufferOptions {
    /// How long `flush()` and ending a run keep retrying before giving up.
    /// Default 60 s; `MLFLOW_TRACKING_FLUSH_TIMEOUT` (seconds) in [`BufferOptions::from_env`].
    /// A single request that hangs can overrun it by up to the request timeout.
    pub flush_timeout: Duration,
    /// First pause between retries; doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Most values held while the server is away; beyond it logging calls fail
    /// instead of growing memory without bound.
    pub max_buffered: usize,
    /// Receives the warnings; prints them to stderr by default.
    pub warn: WarnFn,
}

impl fmt::Debug for BufferOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferOptions")
            .field("flush_timeout", &self.flush_timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_buffered", &self.max_buffered)
            .finish_non_exhaustive()
    }
}

impl Default for BufferOptions {
    fn default() -> Self {
        BufferOptions {
            flush_timeout: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_buffered: 1_000_000,
            warn: Arc::new(|msg: &str| eprintln!("{msg}")),
        }
    }
}

impl BufferOptions {
    /// Defaults, with `flush_timeout` from `MLFLOW_TRACKING_FLUSH_TIMEOUT`
    /// (seconds; this crate's variable, not one MLflow reads).
    pub fn from_env() -> Result<Self> {
        let mut opts = BufferOptions::default();
        if let Ok(v) = std::env::var("MLFLOW_TRACKING_FLUSH_TIMEOUT") {
            let secs: f64 = v.trim().parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).ok_or_else(|| {
                TrackingError::InvalidValue {
                    what: "MLFLOW_TRACKING_FLUSH_TIMEOUT".into(),
                    reason: format!("{v:?} is not a number of seconds"),
                }
            })?;
            opts.flush_timeout = Duration::from_secs_f64(secs);
        }
        Ok(opts)
    }
}

/// A [`Tracker`] that buffers params, metrics and tags while its backend is
/// unreachable; see the module docs. Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct BufferedTracker {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn Tracker>,
    opts: BufferOptions,
    /// Held across requests: that is what keeps concurrent loggers in order.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    /// Values (not requests) in `queue`.
    pending_values: usize,
    /// Some while the backend is considered away (the queue is non-empty).
    outage: Option<Outage>,
    /// Values the server refused after an outage: (count, first error).
    rejected: Option<(usize, TrackingError)>,
}

struct Outage {
    next_attempt: Instant,
    delay: Duration,
    /// Values queued during this outage, for the recovery note.
    buffered: usize,
}

struct Pending {
    run_id: String,
    op: Op,
}

enum Op {
    Params(Vec<(String, String)>),
    Metrics { metrics: Vec<(String, f64)>, step: i64, timestamp_ms: i64 },
    Tags(Vec<(String, String)>),
}

impl Op {
    fn len(&self) -> usize {
        match self {
            Op::Params(p) | Op::Tags(p) => p.len(),
            Op::Metrics { metrics, .. } => metrics.len(),
        }
    }

    fn send(&self, t: &dyn Tracker, run_id: &str) -> Result<()> {
        fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
            v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
        }
        match self {
            Op::Params(p) => t.log_params(run_id, &pairs(p)),
            Op::Tags(p) => t.set_tags(run_id, &pairs(p)),
            Op::Metrics { metrics, step, timestamp_ms } => {
                let m: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                t.log_metrics(run_id, &m, *step, *timestamp_ms)
            }
        }
    }
}

/// "3 metric(s), 1 tag(s)".
fn describe<'a>(ops: impl IntoIterator<Item = &'a Op>) -> String {
    let (mut m, mut p, mut t) = (0, 0, 0);
    for op in ops {
        match op {
            Op::Params(v) => p += v.len(),
            Op::Tags(v) => t += v.len(),
            Op::Metrics { metrics, .. } => m += metrics.len(),
        }
    }
    let parts: Vec<String> = [(m, "metric"), (p, "param"), (t, "tag")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}(s)"))
        .collect();
    if parts.is_empty() {
        "0 value(s)".into()
    } else {
        parts.join(", ")
    }
}

fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl fmt::Debug for BufferedTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedTracker").field("inner", &self.shared.inner).field("pending", &self.pending()).finish()
    }
}

impl BufferedTracker {
    pub fn new(inner: Arc<dyn Tracker>, opts: BufferOptions) -> Self {
        BufferedTracker { shared: Arc::new(Shared { inner, opts, state: Mutex::new(State::default()) }) }
    }

    pub fn inner(&self) -> &Arc<dyn Tracker> {
        &self.shared.inner
    }

    pub fn options(&self) -> &BufferOptions {
        &self.shared.opts
    }

    /// Values logged but not yet delivered.
    pub fn pending(&self) -> usize {
        self.lock().pending_values
    }

    /// Sends everything queued, retrying with backoff for up to `timeout`.
    /// `Err(Unsent)` if values remain (they stay queued), `Err(Rejected)` once
    /// if the server refused some queued values.
    pub fn flush_within(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut st = self.lock();
        self.shared.flush_locked(&mut st, start, start + timeout)?;
        match st.rejected.take() {
            Some((count, e)) => Err(TrackingError::Rejected { count, source: Box::new(e) }),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrap(&self, h: RunHandle) -> RunHandle {
        RunHandle { tracker: Arc::new(self.clone()), ..h }
    }

    /// Gives queued values a chance (respecting the backoff) before a read or a
    /// call that is not buffered, so that it sees them.
    fn catch_up(&self) {
        let mut st = self.lock();
        let _ = self.shared.drain(&mut st, false);
    }

    /// Sends `ops` after whatever is queued, or queues them.
    fn submit(&self, run_id: &str, mut ops: Vec<Op>) -> Result<()> {
        let sh = &self.shared;
        let mut st = self.lock();
        if !st.queue.is_empty() {
            let _ = sh.drain(&mut st, false);
        }
        if !st.queue.is_empty() {
            // Still away: behind the older values, to keep the order.
            sh.enqueue(&mut st, run_id, ops)?;
            return Ok(());
        }
        let mut i = 0;
        while i < ops.len() {
            match ops[i].send(&*sh.inner, run_id) {
                Ok(()) => i += 1,
                Err(e) if e.is_transient() => {
                    let rest: Vec<Op> = ops.drain(i..).collect();
                    let what = describe(&rest);
                    sh.enqueue(&mut st, run_id, rest)?;
                    let why = match &e {
                        TrackingError::Unreachable { method, url, source } => format!("{method} {url}: {source}"),
                        other => other.to_string(),
                    };
                    (sh.opts.warn)(&format!(
                        "warning: MLflow server unreachable, buffering {what} ({why}); \
                         retrying on later calls, at flush and when the run ends"
                    ));
                    st.outage = Some(Outage {
                        next_attempt: Instant::now() + sh.opts.initial_backoff,
                        delay: sh.opts.initial_backoff,
                        buffered: st.pending_values,
                    });
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Shared {
    fn enqueue(&self, st: &mut State, run_id: &str, ops: Vec<Op>) -> Result<()> {
        let n: usize = ops.iter().map(Op::len).sum();
        if st.pending_values + n > self.opts.max_buffered {
            return Err(TrackingError::InvalidValue {
                what: "MLflow buffer".into(),
                reason: format!(
                    "{} value(s) already wait for the unreachable MLflow server (limit {}); \
                     refusing {n} more",
                    st.pending_values, self.opts.max_buffered
                ),
            });
        }
        for op in ops {
            st.queue.push_back(Pending { run_id: run_id.to_string(), op });
        }
        st.pending_values += n;
        if let Some(o) = st.outage.as_mut() {
            o.buffered += n;
        }
        Ok(())
    }

    /// Sends queued values oldest first. `Ok` when the queue is empty;
    /// `Err(Some(e))` when an attempt failed with transient `e`; `Err(None)` when
    /// the attempt was skipped because of the backoff (`force` ignores it).
    fn drain(&self, st: &mut State, force: bool) -> std::result::Result<(), Option<TrackingError>> {
        if st.queue.is_empty() {
            return Ok(());
        }
        if !force && st.outage.as_ref().is_some_and(|o| Instant::now() < o.next_attempt) {
            return Err(None);
        }
        while let Some(front) = st.queue.front() {
            match front.op.send(&*self.inner, &front.run_id) {
                Ok(()) => {
                    let p = st.queue.pop_front().expect("front exists");
                    st.pending_values -= p.op.len();
                }
                Err(e) if e.is_transient() => {
                    if let Some(o) = st.outage.as_mut() {
                        o.delay = (o.delay * 2).min(self.opts.max_backoff);
                        o.next_attempt = Instant::now() + o.delay;
                    }
                    return Err(Some(e));
                }
                Err(e) => {
                    let p = st.queue.pop_front().expect("front exists");
                    let n = p.op.len();
                    st.pending_values -= n;
                    (self.opts.warn)(&format!(
                        "warning: the MLflow server rejected {} buffered for run {}; dropping them: {e}",
                        describe([&p.op]),
                        p.run_id
                    ));
                    match st.rejected.as_mut() {
                        Some((count, _)) => *count += n,
                        None => st.rejected = Some((n, e)),
                    }
                }
            }
        }
        if let Some(o) = st.outage.take() {
            (self.opts.warn)(&format!(
                "note: MLflow server reachable again; sent the {} value(s) buffered during the outage",
                o.buffered
            ));
        }
        Ok(())
    }

    /// Retries until the queue is empty or `deadline` passes.
    fn flush_locked(&self, st: &mut State, start: Instant, deadline: Instant) -> Result<()> {
        let mut delay = self.opts.initial_backoff;
        loop {
            let err = match self.drain(st, true) {
                Ok(()) => return Ok(()),
                Err(e) => e.unwrap_or_else(|| TrackingError::InvalidValue {
                    what: "flush".into(),
                    reason: "no attempt was made".into(),
                }),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(TrackingError::Unsent {
                    pending: st.pending_values,
                    waited: start.elapsed(),
                    source: Box::new(err),
                });
            }
            std::thread::sleep(delay.min(deadline - now));
            delay = (delay * 2).min(self.opts.max_backoff);
        }
    }
}

impl Drop for Shared {
    /// Last chance for values still queued when the final handle goes away
    /// (a run that was never ended): one attempt, then a warning naming the loss.
    fn drop(&mut self) {
        let mut st = std::mem::take(self.state.get_mut().unwrap_or_else(|e| e.into_inner()));
        if st.queue.is_empty() {
            return;
        }
        if let Err(e) = self.drain(&mut st, true) {
            let why = e.map(|e| format!(": {e}")).unwrap_or_default();
            (self.opts.warn)(&format!(
                "warning: {} logged while the MLflow server was unreachable were never sent{why}",
                describe(st.queue.iter().map(|p| &p.op))
            ));
        }
    }
}

impl Tracker for BufferedTracker {
    fn get_or_create_experiment(&self, name: &str) -> Result<String> {
        self.shared.inner.get_or_create_experiment(name)
    }

    fn create_run(&self, experiment_id: &str, run_name: &str, tags: &[(String, String)]) -> Result<RunHandle> {
        self.catch_up();
        Ok(self.wrap(self.shared.inner.create_run(experiment_id, run_name, tags)?))
    }

    fn open_run(&self, run_id: &str) -> Result<RunHandle> {
        self.catch_up();
        Ok(self.wrap(self.shared.inner.open_run(run_id)?))
    }

    fn run_info(&self, run_id: &str) -> Result<RunInfo> {
        self.catch_up();
        self.shared.inner.run_info(run_id)
    }

    /// Ending a run (a terminal status) first delivers everything queued,
    /// retrying for up to `flush_timeout`; if values remain it returns
    /// [`TrackingError::Unsent`] and leaves the status alone. The status update
    /// itself is retried within the same deadline.
    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()> {
        if !status.is_terminated() {
            self.catch_up();
            return self.shared.inner.update_run(run_id, status, end_time);
        }
        let sh = &self.shared;
        let start = Instant::now();
        let deadline = start + sh.opts.flush_timeout;
        let mut st = self.lock();
        sh.flush_locked(&mut st, start, deadline)?;
        let mut delay = sh.opts.initial_backoff;
        loop {
            match sh.inner.update_run(run_id, status, end_time) {
                Ok(()) => break,
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
                    delay = (delay * 2).min(sh.opts.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
        match st.rejected.take() {
            Some((count, e)) => Err(TrackingError::Rejected { count, source: Box::new(e) }),
            None => Ok(()),
        }
    }

    fn log_params(&self, run_id: &str, params: &[(&str, &str)]) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_params(params)?;
        let ops = params.chunks(MAX_PARAMS_PER_BATCH).map(|c| Op::Params(owned(c))).collect();
        self.submit(run_id, ops)
    }

    fn log_metrics(&self, run_id: &str, metrics: &[(&str, f64)], step: i64, timestamp_ms: i64) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_metrics(metrics, timestamp_ms)?;
        let ops = metrics
            .chunks(MAX_METRICS_PER_BATCH)
            .map(|c| Op::Metrics { metrics: c.iter().map(|(k, v)| (k.to_string(), *v)).collect(), step, timestamp_ms })
            .collect();
        self.submit(run_id, ops)
    }

    fn set_tags(&self, run_id: &str, tags: &[(&str, &str)]) -> Result<()> {
        validate::validate_run_id(run_id)?;
        check_tags(tags)?;
        let ops = tags.chunks(MAX_TAGS_PER_BATCH).map(|c| Op::Tags(owned(c))).collect();
        self.submit(run_id, ops)
    }

    /// Not buffered: an upload that fails is an error for the caller to handle.
    fn log_artifact(&self, run_id: &str, local_file: &Path, artifact_subdir: Option<&str>) -> Result<String> {
        self.catch_up();
        self.shared.inner.log_artifact(run_id, local_file, artifact_subdir)
    }

    fn log_artifact_bytes(
        &self,
        run_id: &str,
        name: &str,
        bytes: &[u8],
        artifact_subdir: Option<&str>,
    ) -> Result<String> {
        self.catch_up();
        self.shared.inner.log_artifact_bytes(run_id, name, bytes, artifact_subdir)
    }

    /// Only delivered values: while the server is away, queued ones are missing.
    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>> {
        self.catch_up();
        self.shared.inner.metric_history(run_id, key)
    }

    fn params(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        self.catch_up();
        self.shared.inner.params(run_id)
    }

    fn tags(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
        self.catch_up();
        self.shared.inner.tags(run_id)
    }

    /// [`BufferedTracker::flush_within`] with the configured `flush_timeout`.
    fn flush(&self) -> Result<()> {
        self.flush_within(self.shared.opts.flush_timeout)?;
        self.shared.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::FileStore;

    /// A FileStore whose "server" can be taken down (transient errors) or made
    /// to refuse writes (4xx), counting the write requests it receives.
    #[derive(Debug)]
    struct Flaky {
        store: FileStore,
        down: AtomicBool,
        refuse: AtomicBool,
        writes: AtomicUsize,
    }

    impl Flaky {
        fn gate(&self) -> Result<()> {
            if self.down.load(Ordering::SeqCst) {
                return Err(TrackingError::Unreachable {
                    method: "POST",
                    url: "http://test/api".into(),
                    source: "connection refused".into(),
                });
            }
            if self.refuse.load(Ordering::SeqCst) {
                return Err(TrackingError::Http {
                    method: "POST",
                    url: "http://test/api".into(),
                    status: 400,
                    error_code: Some("INVALID_PARAMETER_VALUE".into()),
                    message: "no".into(),
                });
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    impl Tracker for Flaky {
        fn get_or_create_experiment(&self, name: &str) -> Result<String> {
            self.store.get_or_create_experiment(name)
        }
        fn create_run(&self, e: &str, n: &str, t: &[(String, String)]) -> Result<RunHandle> {
            self.store.create_run(e, n, t)
        }
        fn open_run(&self, run_id: &str) -> Result<RunHandle> {
            self.store.open_run(run_id)
        }
        fn run_info(&self, run_id: &str) -> Result<RunInfo> {
            self.store.run_info(run_id)
        }
        fn update_run(&self, run_id: &str, s: RunStatus, t: Option<i64>) -> Result<()> {
            self.gate()?;
            self.store.update_run(run_id, s, t)
        }
        fn log_params(&self, run_id: &str, p: &[(&str, &str)]) -> Result<()> {
            self.gate()?;
            self.store.log_params(run_id, p)
        }
        fn log_metrics(&self, run_id: &str, m: &[(&str, f64)], step: i64, ts: i64) -> Result<()> {
            self.gate()?;
            self.store.log_metrics(run_id, m, step, ts)
        }
        fn set_tags(&self, run_id: &str, t: &[(&str, &str)]) -> Result<()> {
            self.gate()?;
            self.store.set_tags(run_id, t)
        }
        fn log_artifact(&self, run_id: &str, f: &Path, s: Option<&str>) -> Result<String> {
            self.store.log_artifact(run_id, f, s)
        }
        fn log_artifact_bytes(&self, run_id: &str, n: &str, b: &[u8], s: Option<&str>) -> Result<String> {
            self.store.log_artifact_bytes(run_id, n, b, s)
        }
        fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>> {
            self.store.metric_history(run_id, key)
        }
        fn params(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
            self.store.params(run_id)
        }
        fn tags(&self, run_id: &str) -> Result<BTreeMap<String, String>> {
            self.store.tags(run_id)
        }
    }

    fn setup(flush_timeout: Duration) -> (tempfile::TempDir, Arc<Flaky>, BufferedTracker, Arc<Mutex<Vec<String>>>) {
        let tmp = tempfile::tempdir().unwrap();
        let flaky = Arc::new(Flaky {
            store: FileStore::new(tmp.path()).unwrap(),
            down: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            writes: AtomicUsize::new(0),
        });
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let w = warnings.clone();
        let opts = BufferOptions {
            flush_timeout,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            max_buffered: 10,
            warn: Arc::new(move |m: &str| w.lock().unwrap().push(m.to_string())),
        };
        let t = BufferedTracker::new(flaky.clone(), opts);
        (tmp, flaky, t, warnings)
    }

    #[test]
    fn outage_is_buffered_in_order_and_sent_once() {
        let (_tmp, flaky, t, warnings) = setup(Duration::from_secs(5));
        let exp = t.get_or_create_experiment("e").unwrap();
        let run = t.create_run(&exp, "r", &[]).unwrap();
        run.log_metrics(&[("loss", 1.0), ("acc", 0.5)], 1).unwrap();
        flaky.down.store(true, Ordering::SeqCst);
        run.log_metrics(&[("loss", 0.5), ("acc", 0.6)], 2).unwrap();
        run.log_metrics(&[("loss", 0.25), ("acc", 0.7)], 3).unwrap();
        run.log_param("lr", 0.1).unwrap();
        run.set_tag("phase", "outage").unwrap();
        assert_eq!(t.pending(), 6);
        // Bad input is still refused at once, never queued.
        assert!(matches!(run.log_metric("../x", 1.0, 4), Err(TrackingError::InvalidName { .. })));
        assert!(run.log_params(&[("a", "1"), ("a", "2")]).is_err());
        assert_eq!(t.pending(), 6);
        {
            let w = warnings.lock().unwrap();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].starts_with("warning: MLflow server unreachable, buffering 2 metric(s)"), "{w:?}");
        }
        // Full buffer: the call fails rather than dropping anything.
        assert!(run.log_metrics(&[("m", 0.0); 5].map(|(k, v)| (k, v)), 9).is_err());
        assert_eq!(t.pending(), 6);

        flaky.down.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50)); // past the backoff
        run.log_metrics(&[("loss", 0.125), ("acc", 0.8)], 4).unwrap();
        assert_eq!(t.pending(), 0);
        let steps: Vec<i64> = run.metric_history("loss").unwrap().iter().map(|p| p.2).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        assert_eq!(run.metric_history("acc").unwrap().len(), 4);
        assert_eq!(run.params().unwrap()["lr"], "0.1");
        assert_eq!(run.tags().unwrap()["phase"], "outage");
        // 1 + 2 + 1 + 1 + 1 requests delivered, none twice.
        assert_eq!(flaky.writes.load(Ordering::SeqCst), 6);
        let w = warnings.lock().unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].contains("reachable again"), "{w:?}");
        drop(w);
        run.end(RunStatus::Finished).unwrap();
        assert_eq!(run.status().unwrap(), RunStatus::Finished);
    }

    #[test]
    fn end_gives_up_after_the_deadline_and_keeps_the_values() {
        let (_tmp, flaky, t, _warnings) = setup(Duration::from_millis(200));
        let exp = t.get_or_create_experiment("e").unwrap();
        let run = t.create_run(&exp, "r", &[]).unwrap();
        flaky.down.store(true, Ordering::SeqCst);
        run.log_metrics(&[("loss", 1.0), ("acc", 0.5)], 1).unwrap();
        let started = Instant::now();
        match run.end(RunStatus::Finished) {
            Err(e @ TrackingError::Unsent { pending: 2, .. }) => {
                assert!(e.to_string().starts_with("2 value(s)"), "{e}");
                assert!(e.is_transient());
            }
            other => panic!("expected Unsent, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(run.status().unwrap(), RunStatus::Running);
        assert!(matches!(t.flush_within(Duration::ZERO), Err(TrackingError::Unsent { pending: 2, .. })));
        flaky.down.store(false, Ordering::SeqCst);
        run.end(RunStatus::Failed).unwrap();
        assert_eq!(run.metric_history("loss").unwrap().len(), 1);
        assert_eq!(run.status().unwrap(), RunStatus::Failed);
    }

    #[test]
    fn client_errors_are_not_retried() {
        let (_tmp, flaky, t, warnings) = setup(Duration::from_millis(100));
        let exp = t.get_or_create_experiment("e").unwrap();
        let run = t.create_run(&exp, "r", &[]).unwrap();
        flaky.refuse.store(true, Ordering::SeqCst);
        let e = run.log_metric("loss", 1.0, 1).unwrap_err();
        assert_eq!(e.mlflow_error_code(), Some("INVALID_PARAMETER_VALUE"));
        assert!(!e.is_transient());
        assert_eq!(t.pending(), 0);
        assert!(warnings.lock().unwrap().is_empty());

        // Queued during an outage, refused once the server is back: dropped
        // with a warning and reported once by the end of the run.
        flaky.refuse.store(false, Ordering::SeqCst);
        flaky.down.store(true, Ordering::SeqCst);
        run.log_metric("loss", 2.0, 2).unwrap();
        flaky.down.store(false, Ordering::SeqCst);
        flaky.refuse.store(true, Ordering::SeqCst);
        t.flush_within(Duration::from_millis(50)).unwrap_err();
        flaky.refuse.store(false, Ordering::SeqCst);
        assert_eq!(t.pending(), 0);
        assert!(warnings.lock().unwrap().iter().any(|w| w.contains("rejected 1 metric(s)")));
        t.flush().unwrap(); // reported once only
        run.end(RunStatus::Finished).unwrap();
    }
}
