//! `infer serve`: the models behind an HTTP API (cargo feature `serve`).
//!
//! * The Open Inference Protocol v2 REST API (Triton, KServe): `GET /v2`,
//!   `/v2/health/{live,ready}`, `/v2/models/{name}[/ready]`, `POST /v2/models/{name}/infer`
//!   for every loaded model and for `ensemble` (all of them, majority vote).
//! * `POST /predict`: JSON pixels or Kaggle CSV rows in, labels out (`?detail=true`: the
//!   probabilities and each model's vote).
//! * `GET /metrics` (Prometheus), `GET /` (a page to draw a digit on).
//!
//! Concurrent requests to a model are merged into one batch (see [`ServeConfig`]);
//! every error is `{"error": "..."}` with the status of its [`ServeError`].

mod batcher;
mod error;
mod metrics;
mod protocol;
#[cfg(test)]
mod protocol_fuzz;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use error::ServeError;

use batcher::{BatchPolicy, Batcher};
use metrics::Metrics;
use protocol::{Answer, Images};

use crate::{BackendKind, Model};

/// The name under which all loaded models answer together.
pub const ENSEMBLE: &str = "ensemble";

/// How long a batch waits for batch-mates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchWait {
    /// Until it holds as many images as the previous batch (the clients just answered tend
    /// to come back), `max_batch`, or `max_delay`: a lone client never waits.
    Adaptive,
    /// Until it holds `max_batch` images or `max_delay` has passed (Triton's rule).
    Fixed,
}

/// How the server batches, queues and protects itself. `Default` is safe for a laptop.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Most images merged into one model call; 1 turns dynamic batching off.
    pub max_batch: usize,
    /// Longest a request waits for others to share its batch.
    pub max_delay: Duration,
    /// Whether a batch waits out `max_delay` for `max_batch` images, or only for as many
    /// as the previous batch held (no wait at all for a lone client).
    pub batch_wait: BatchWait,
    /// Most requests admitted at once (running or waiting); more get 503 + Retry-After.
    pub queue: usize,
    /// When set, every route but `/` and the health checks needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Longest a request may take before it is answered 504.
    pub timeout: Duration,
    /// Largest request body in bytes; larger gets 413.
    pub body_limit: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_batch: 64,
            max_delay: Duration::from_micros(2000),
            batch_wait: BatchWait::Adaptive,
            queue: 1024,
            token: None,
            timeout: Duration::from_secs(10),
            body_limit: 8 << 20,
        }
    }
}

struct Member {
    name: String,
    backend: BackendKind,
    batcher: Batcher,
}

struct Shared {
    config: ServeConfig,
    members: Vec<Member>,
    classes: usize,
    metrics: Arc<Metrics>,
    /// Requests admitted and not yet answered.
    pending: AtomicUsize,
    ready: AtomicBool,
}

/// The loaded models and their batchers; clone it freely (it is shared). Dropping the
/// last clone stops the batcher threads after the work already queued.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

/// Which models a request runs on.
#[derive(Debug, Clone, Copy)]
enum Target {
    Ensemble,
    Member(usize),
}

/// Holds one of the `queue` places until the request is answered (or dropped).
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    /// Serves `models` (name, model) under `config`. Names must be unique, non-empty, URL
    /// safe and not `ensemble`, and the models must agree on the number of classes.
    pub fn new(models: Vec<(String, Model)>, config: ServeConfig) -> Result<Server, ServeError> {
        let Some(classes) = models.first().map(|(_, m)| m.num_classes()) else {
            return Err(ServeError::Config("no models to serve".into()));
        };
        for (i, (name, m)) in models.iter().enumerate() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(ServeError::Config(format!(
                    "model name `{name}` must be non-empty ASCII letters, digits, '-', '_' or '.'"
                )));
            }
            if name == ENSEMBLE || models[..i].iter().any(|(n, _)| n == name) {
                return Err(ServeError::Config(format!("model name `{name}` is used twice or reserved")));
            }
            if m.num_classes() != classes {
                return Err(ServeError::Config(format!(
                    "models disagree on the number of classes: {} has {classes}, {name} has {}",
                    models[0].0,
                    m.num_classes()
                )));
            }
        }
        if config.max_batch == 0 || config.queue == 0 || config.body_limit == 0 {
            return Err(ServeError::Config("max batch, queue and body limit must be at least 1".into()));
        }
        let metrics = Arc::new(Metrics::default());
        let policy = BatchPolicy { max_batch: config.max_batch, max_delay: config.max_delay, wait: config.batch_wait };
        let members = models
            .into_iter()
            .map(|(name, model)| Member {
                backend: model.backend(),
                batcher: Batcher::start(model, name.clone(), policy, Arc::clone(&metrics)),
                name,
            })
            .collect();
        let shared =
            Shared { config, members, classes, metrics, pending: AtomicUsize::new(0), ready: AtomicBool::new(true) };
        Ok(Server { shared: Arc::new(shared) })
    }

    /// The names of the loaded models, in the order given.
    pub fn model_names(&self) -> Vec<&str> {
        self.shared.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// The axum router with every route and middleware.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    fn target(&self, name: &str) -> Result<Target, ServeError> {
        if name == ENSEMBLE {
            return Ok(Target::Ensemble);
        }
        self.shared.members.iter().position(|m| m.name == name).map(Target::Member).ok_or_else(|| {
            let mut loaded = self.model_names();
            loaded.push(ENSEMBLE);
            ServeError::ModelNotFound { name: name.to_string(), loaded: loaded.join(", ") }
        })
    }

    fn admit(&self) -> Result<Admission<'_>, ServeError> {
        let limit = self.shared.config.queue;
        let pending = &self.shared.pending;
        let mut now = pending.load(Ordering::Acquire);
        loop {
            if now >= limit {
                return Err(ServeError::QueueFull { pending: now, limit });
            }
            match pending.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(Admission(pending)),
                Err(actual) => now = actual,
            }
        }
    }

    /// Runs `images` through the target's models (through their batchers) and combines
    /// the answers; returns each member's logits too, in member order.
    async fn run(&self, target: Target, images: Images) -> Result<(Answer, Vec<(usize, Vec<f32>)>), ServeError> {
        let _admitted = self.admit()?;
        let members: Vec<usize> = match target {
            Target::Ensemble => (0..self.shared.members.len()).collect(),
            Target::Member(i) => vec![i],
        };
        let n = images.n;
        let input = Arc::new(images.input);
        // Submit to every member first so they run concurrently, then collect.
        let waiting: Vec<_> =
            members.iter().map(|&i| (i, self.shared.members[i].batcher.submit(Arc::clone(&input), n))).collect();
        let mut logits = Vec::with_capacity(waiting.len());
        for (i, rx) in waiting {
            let model = &self.shared.members[i].name;
            let out = rx
                .await
                .map_err(|_| ServeError::Inference {
                    model: model.clone(),
                    source: Arc::new(crate::InferError::WorkerPanicked("the batcher thread exited".into())),
                })?
                .map_err(|source| ServeError::Inference { model: model.clone(), source })?;
            logits.push((i, out));
        }
        Ok((combine(&logits, n, self.shared.classes), logits))
    }
}

/// One model: its argmax and softmax. Several: the majority vote (as offline `infer
/// --ensemble`: ties go to the highest summed probability, then the lowest label) and the
/// mean of their softmax probabilities.
fn combine(logits: &[(usize, Vec<f32>)], n: usize, classes: usize) -> Answer {
    let per_model: Vec<Vec<f32>> = logits.iter().map(|(_, l)| l.clone()).collect();
    let labels = if per_model.len() == 1 {
        crate::labels_from_logits(&per_model[0], n, classes)
    } else {
        crate::majority_vote(&per_model, n, classes)
    };
    let mut probabilities = vec![0f64; n * classes];
    for l in &per_model {
        for (row, sum) in l.chunks_exact(classes).zip(probabilities.chunks_exact_mut(classes)) {
            for (s, p) in sum.iter_mut().zip(crate::softmax(row)) {
                *s += p;
            }
        }
    }
    let k = per_model.len().max(1) as f64;
    Answer { labels, probabilities: probabilities.iter().map(|p| (p / k) as f32).collect(), classes }
}

/// Serves `server` on `listener` until `shutdown` completes, then stops accepting
/// connections, lets the requests in flight finish (readiness turns false; batches run
/// without waiting out their batching window) and returns.
pub async fn serve<F>(listener: tokio::net::TcpListener, server: Server, shutdown: F) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let app = server.router();
    let shared = Arc::clone(&server.shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            shared.ready.store(false, Ordering::Release);
            // The drain waits on the requests in flight: do not keep them for batch-mates.
            for m in &shared.members {
                m.batcher.flush();
            }
        })
        .await
        .map_err(|source| ServeError::Io { addr, source })
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM stops the server.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Binds `addr`, calls `on_listening` with the bound address (port 0 picks a free one),
/// serves until SIGTERM or Ctrl-C, drains, and stops the batchers.
pub fn run_blocking(addr: &str, server: Server, on_listening: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    let io_err = |source| ServeError::Io { addr: addr.to_string(), source };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(io_err)?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => ServeError::AddrInUse { addr: addr.to_string() },
            _ => io_err(e),
        })?;
        on_listening(listener.local_addr().map_err(io_err)?);
        serve(listener, server, shutdown_signal()).await
    });
    // Connections still open after the drain are cut here; the batchers stop when the
    // last `Server` clone (held by the router) goes.
    drop(rt);
    result
}
