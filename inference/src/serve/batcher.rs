//! Dynamic batching: one worker thread per model takes the first waiting request, then
//! every request already queued, and waits for more only while that can pay. With
//! [`BatchWait::Adaptive`] (the default) it waits until the batch holds as many images as
//! the previous batch did (the clients it answered are likely to come back), `max_batch`
//! images, or `max_delay` after the first request arrived, whichever comes first: a lone
//! client never waits (the previous batch held its one request; the fixed window cost
//! it 2.5 ms of a 3.8 ms p50), while under load batches fill up to the concurrency.
//! [`BatchWait::Fixed`] is Triton's rule: `max_batch` images or `max_delay`.
//! The merged batch runs once and each request gets its own rows back. Once the server
//! drains ([`Batcher::flush`]) nothing waits for batch-mates any more: what is queued runs
//! at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use super::BatchWait;
use crate::error::panic_message;
use crate::{InferError, Model, PIXELS};

/// A model's logits for one request's images, or the batch's error.
pub(crate) type JobResult = Result<Vec<f32>, Arc<InferError>>;

/// One request's images waiting for a model.
struct Job {
    /// `n * PIXELS` floats (pixel/255); shared by every ensemble member's job.
    input: Arc<Vec<f32>>,
    n: usize,
    arrived: Instant,
    reply: oneshot::Sender<JobResult>,
}

/// What the worker receives: a request, or the wake-up that ends a batching window early.
enum Msg {
    Job(Job),
    Flush,
}

/// How requests are merged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchPolicy {
    /// Most images in a merged batch; 1 turns merging off. A single request with more
    /// images runs alone, never split.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_delay: Duration,
    pub wait: BatchWait,
}

/// The queue in front of one model and the thread that runs it.
pub(crate) struct Batcher {
    tx: Option<mpsc::Sender<Msg>>,
    worker: Option<JoinHandle<()>>,
    queued: Arc<AtomicUsize>,
    /// Set by [`Batcher::flush`]: batching windows are over.
    draining: Arc<AtomicBool>,
}

impl Batcher {
    /// Starts the worker thread for `model`, called `name` in the metrics.
    pub fn start(model: Model, name: String, policy: BatchPolicy, metrics: Arc<Metrics>) -> Batcher {
        let (tx, rx) = mpsc::channel::<Msg>();
        let queued = Arc::new(AtomicUsize::new(0));
        let draining = Arc::new(AtomicBool::new(false));
        let worker = {
            let (queued, draining) = (Arc::clone(&queued), Arc::clone(&draining));
            std::thread::Builder::new()
                .name(format!("batcher-{name}"))
                .spawn(move || run_worker(&model, &name, policy, &rx, &queued, &draining, &metrics))
                .expect("spawn a batcher thread")
        };
        Batcher { tx: Some(tx), worker: Some(worker), queued, draining }
    }

    /// The server is draining: run the batch being collected now, and every later one
    /// without waiting for batch-mates (none may come, and the drain waits on these).
    pub fn flush(&self) {
        self.draining.store(true, Ordering::Release);
        // Wakes the worker if it sits in a batching window; it may already have gone.
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Flush);
        }
    }

    /// Queues `n` images; the receiver gets this request's logits (`n * classes`).
    pub fn submit(&self, input: Arc<Vec<f32>>, n: usize) -> oneshot::Receiver<JobResult> {
        let (reply, rx) = oneshot::channel();
        let job = Job { input, n, arrived: Instant::now(), reply };
        self.queued.fetch_add(1, Ordering::Relaxed);
        // The sender only goes away in Drop, so the worker is alive; if it died anyway the
        // dropped reply makes the caller see a closed channel.
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Job(job)).is_err() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
        rx
    }

    /// Requests waiting for this model (not yet taken into a batch).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the channel ends the worker after the jobs already queued.
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn take(job: Job, queued: &AtomicUsize) -> Job {
    queued.fetch_sub(1, Ordering::Relaxed);
    job
}

fn run_worker(
    model: &Model,
    name: &str,
    policy: BatchPolicy,
    rx: &mpsc::Receiver<Msg>,
    queued: &AtomicUsize,
    draining: &AtomicBool,
    metrics: &Metrics,
) {
    let max_batch = policy.max_batch.max(1);
    let mut carry: Option<Job> = None;
    let mut input = Vec::new();
    let mut logits = Vec::new();
    // Images the previous batch held: how many this one waits for (see the module notes).
    let mut expected = 1;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(Msg::Job(j)) => take(j, queued),
                Ok(Msg::Flush) => continue,
                Err(_) => return,
            },
        };
        // `flush` sets the flag before it sends, so a window opened after the flag went
        // up is empty, and one opened before it ends on the Flush message.
        let delay = if draining.load(Ordering::Acquire) { Duration::ZERO } else { policy.max_delay };
        let deadline = first.arrived + delay;
        let target = match policy.wait {
            BatchWait::Adaptive => expected.min(max_batch),
            BatchWait::Fixed => max_batch,
        };
        let mut images = first.n;
        let mut batch = vec![first];
        while images < max_batch {
            // Past the target only what is already queued is taken.
            let wait =
                if images >= target { Duration::ZERO } else { deadline.saturating_duration_since(Instant::now()) };
            let next = if wait.is_zero() { rx.try_recv().ok() } else { rx.recv_timeout(wait).ok() };
            let Some(Msg::Job(job)) = next else { break };
            let job = take(job, queued);
            if images + job.n > max_batch {
                // It starts the next batch rather than overfilling this one.
                carry = Some(job);
                break;
            }
            images += job.n;
            batch.push(job);
        }
        expected = images.max(1);
        // Requests whose client gave up (timeout, disconnect) are not worth computing.
        batch.retain(|j| !j.reply.is_closed());
        let n: usize = batch.iter().map(|j| j.n).sum();
        if n == 0 {
            continue;
        }
        input.clear();
        for j in &batch {
            input.extend_from_slice(&j.input[..j.n * PIXELS]);
        }
        logits.clear();
        let t = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run_into(&input, n, &mut logits)))
            .unwrap_or_else(|p| {
                Err(InferError::WorkerPanicked(format!("{}: {}", model.path().display(), panic_message(&*p))))
            });
        metrics.observe_batch(name, n, t.elapsed());
        match result {
            Ok(()) => {
                let classes = model.num_classes();
                let mut start = 0;
                for j in batch {
                    let end = start + j.n * classes;
                    let _ = j.reply.send(Ok(logits[start..end].to_vec()));
                    start = end;
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for j in batch {
                    let _ = j.reply.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}
