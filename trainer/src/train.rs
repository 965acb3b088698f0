//! Training runs: the seed or strong recipe ([`crate::recipe`]), a checkpoint after every
//! epoch, `--resume` of an interrupted run into the same MLflow run, and MLflow tracking
//! (file store or server) with the best epoch's checkpoint and evaluation as artifacts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use models::{CheckpointMeta, ModelConfig};
use tch::{Device, Kind, Tensor};
use tracking::{FileStore, RunHandle, RunStatus, Tracker};

use crate::amp::Autocast;
use crate::augment::Augment;
use crate::checkpoint::{load_weights, save_checkpoint, PRODUCER};
use crate::error::{Result, TrainerError};
use crate::loader::DeviceSet;
use crate::net::{Model, Net};
use crate::optim::{smoothed_cross_entropy, Ema, Optimizer};
use crate::options::{device_name, resolve_device, DeviceChoice, EpochStats, TrainOptions, TrainReport};
use crate::recipe::{Keep, OptimizerKind};
use crate::report::Confusion;
use crate::state::{self, TrainState, CONFIG_FILE, EMA_FILE, OPTIMIZER_FILE};

/// Makes the C allocator keep the memory libtorch frees for reuse. glibc serves blocks above
/// its mmap threshold (128 KiB at first) with fresh mappings and returns them on free, so every
/// activation, gradient and temporary of a step was page-faulted and zeroed anew: ~19,000 page
/// faults a step for resnet18 at batch 64, a third of its CPU step time on a busy machine. With
/// the threshold at glibc's maximum (32 MiB) and no trimming of the heap below 1 GiB, a step
/// reuses the previous step's blocks. Results are unchanged (only where memory comes from).
/// Idempotent; nothing happens off glibc.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: glibc's documented tuning call, with values inside its accepted ranges; it only
        // changes thresholds for later allocations.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (SIGINT) stop training after the current batch; the run ends KILLED and its
/// last completed epoch stays resumable. A second Ctrl-C exits at once.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after this batch (Ctrl-C again to quit now)");
    })
    .map_err(|e| TrainerError::Config(format!("cannot install the Ctrl-C handler: {e}")))
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Training data, validated and split, before anything is written.
struct Prepared {
    /// Training images, on the training device once for the whole run.
    train: DeviceSet,
    val_x: Tensor,
    val_y: Tensor,
    n_val: usize,
    source: String,
}

fn prepare_data(opts: &TrainOptions, device: Device) -> Result<Prepared> {
    let full = data::load(&opts.data, data::Split::Train)?;
    let source = full.source.clone();
    let dataset_err = |message: String| TrainerError::Dataset { source_name: source.clone(), message };
    let rows = opts.limit.map_or(full.len(), |l| l.min(full.len()));
    let ds = if rows < full.len() { full.subset(&(0..rows).collect::<Vec<_>>()) } else { full };
    let labels = ds.labels.as_ref().ok_or_else(|| dataset_err("has no labels; training needs train.csv".into()))?;
    if ds.is_empty() {
        return Err(dataset_err("has no rows".into()));
    }
    let val_fraction = opts.hyper.val_fraction;
    let (train_idx, val_idx) = data::stratified_split(labels, val_fraction, opts.hyper.split_seed);
    // --val-fraction 0 trains on every image (a submission's members); otherwise a split
    // that rounds to no validation image is a mistake.
    if train_idx.len() < 2 || (val_idx.is_empty() && val_fraction > 0.0) {
        return Err(dataset_err(format!(
            "{} rows give {} training and {} validation images with --val-fraction {val_fraction}; need at least 2 and 1",
            ds.len(),
            train_idx.len(),
            val_idx.len(),
        )));
    }
    let side = data::IMAGE_SIDE as i64;
    let torch = || TrainerError::torch("copying the validation set to the device");
    let val_x = Tensor::from_slice(&ds.to_f32(&val_idx))
        .f_reshape([val_idx.len() as i64, 1, side, side])
        .and_then(|t| t.f_to_device(device))
        .map_err(torch())?;
    let y: Vec<i64> = val_idx.iter().map(|&i| i64::from(labels[i])).collect();
    let val_y = Tensor::from_slice(&y).f_to_device(device).map_err(torch())?;
    let train = DeviceSet::new(&ds.subset(&train_idx), device)
        .map_err(TrainerError::torch("copying the training set to the device"))?;
    Ok(Prepared { train, val_x, val_y, n_val: val_idx.len(), source: ds.source })
}

/// Loss, accuracy and confusion matrix of a network on a labelled set.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    pub correct: usize,
    pub confusion: Confusion,
}

/// Mean cross-entropy and number of correct predictions of `net` in eval mode.
pub fn evaluate(net: &Net, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<(f64, usize)> {
    let e = evaluate_full(net, x, y, batch_size, false)?;
    Ok((e.loss, e.correct))
}

/// [`evaluate`] with the confusion matrix, optionally under bf16 autocast.
pub fn evaluate_full(net: &Net, x: &Tensor, y: &Tensor, batch_size: usize, amp: bool) -> Result<Evaluation> {
    let n = x.size()[0];
    let classes = net.config().num_classes;
    let mut confusion = Confusion::new(classes);
    if n == 0 {
        return Ok(Evaluation { loss: f64::NAN, correct: 0, confusion });
    }
    tch::no_grad(|| {
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let mut start = 0i64;
        while start < n {
            let len = (batch_size as i64).min(n - start);
            let torch = || TrainerError::torch("evaluation");
            let xb = x.f_narrow(0, start, len).map_err(torch())?;
            let yb = y.f_narrow(0, start, len).map_err(torch())?;
            let logits = {
                let _autocast = if amp { Some(Autocast::bf16(net.device())?) } else { None };
                net.f_forward_t(&xb, false)?
            };
            let (loss, preds, truth) = (|| -> Result<(f64, Vec<i64>, Vec<i64>), tch::TchError> {
                let loss = f64::try_from(smoothed_cross_entropy(&logits, &yb, 0.0)?)?;
                let preds = Vec::<i64>::try_from(logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?)?;
                let truth = Vec::<i64>::try_from(yb.f_to_device(Device::Cpu)?)?;
                Ok((loss, preds, truth))
            })()
            .map_err(TrainerError::torch("evaluation loss"))?;
            for (&t, &p) in truth.iter().zip(&preds) {
                confusion.add(t as usize, p as usize);
                correct += usize::from(t == p);
            }
            loss_sum += loss * len as f64;
            start += len;
        }
        Ok(Evaluation { loss: loss_sum / n as f64, correct, confusion })
    })
}

/// Mean cross-entropy of `logits` against class indices, as `torch.nn.functional.cross_entropy`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor, tch::TchError> {
    smoothed_cross_entropy(logits, targets, 0.0)
}

/// Adam over the trainable tensors of `net` (torch's defaults: betas 0.9/0.999, eps 1e-8).
pub fn adam(net: &Net, lr: f64) -> Result<Optimizer> {
    Optimizer::for_net(net, OptimizerKind::Adam, lr, 0.0)
}

/// One optimisation step on a batch in training mode (plain cross-entropy, fp32); returns the
/// batch's mean loss.
pub fn train_step(net: &Net, opt: &mut Optimizer, x: &Tensor, y: &Tensor) -> Result<f64> {
    let loss = train_step_with(net, opt, x, y, 0.0, false)?;
    f64::try_from(&loss).map_err(TrainerError::torch("reading the loss"))
}

/// One optimisation step with label smoothing and optional bf16 autocast (forward and loss
/// only; backward runs outside it, as PyTorch recommends). Returns the detached loss tensor,
/// left on the device so that a GPU is not synchronised every step.
pub fn train_step_with(
    net: &Net,
    opt: &mut Optimizer,
    x: &Tensor,
    y: &Tensor,
    label_smoothing: f64,
    amp: bool,
) -> Result<Tensor> {
    let loss = {
        let _autocast = if amp { Some(Autocast::bf16(net.device())?) } else { None };
        let logits = net.f_forward_t(x, true)?;
        smoothed_cross_entropy(&logits, y, label_smoothing).map_err(TrainerError::torch("training loss"))?
    };
    opt.zero_grad();
    loss.f_backward().map_err(TrainerError::torch("backward pass"))?;
    opt.step()?;
    loss.f_detach().map_err(TrainerError::torch("training step"))
}

/// A run in progress: model, optimiser and tracking, fresh or restored.
struct Session {
    opts: TrainOptions,
    device: Device,
    data: Prepared,
    model: Model,
    ema: Option<Ema>,
    opt: Optimizer,
    run: RunHandle,
    tracking_uri: String,
    state: Progress,
}

/// The non-tensor progress of a run.
#[derive(Debug, Clone, Default)]
struct Progress {
    epoch: usize,
    history: Vec<EpochStats>,
    best: Option<EpochStats>,
    seconds: f64,
}

/// Opens the tracking backend of `uri` and the string recorded for it (an absolute path for
/// a file store).
pub fn open_tracking(uri: &str) -> Result<(Arc<dyn Tracker>, String)> {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok((tracking::open_tracker(uri)?, uri.to_string()));
    }
    let store = FileStore::from_uri(uri)?;
    let root = store.root().display().to_string();
    Ok((Arc::new(store), root))
}

fn setup(opts: &TrainOptions) -> Result<(Device, ModelConfig, Prepared)> {
    opts.validate()?;
    reuse_freed_memory();
    let config = ModelConfig { in_channels: opts.hyper.in_channels, ..ModelConfig::new(opts.model) };
    config.validate()?;
    let device = resolve_device(opts.device)?;
    if let Some(t) = opts.threads {
        tch::set_num_threads(t as i32);
    }
    if opts.hyper.amp {
        // Fails here, before anything is written, on a device without autocast support.
        Autocast::is_enabled(device)?;
        if device == Device::Cpu {
            eprintln!("warning: --amp on the CPU is bf16 autocast, much slower than fp32 without bf16 instructions (20x here)");
        }
    }
    // All input is checked before the first file is written.
    let data = prepare_data(opts, device)?;
    println!(
        "data: {} -> {} training, {} validation images (val fraction {}, split seed {})",
        data.source,
        data.train.len(),
        data.n_val,
        opts.hyper.val_fraction,
        opts.hyper.split_seed
    );
    println!("device: {}, threads: {}", device_name(device), tch::get_num_threads());
    Ok((device, config, data))
}

/// Trains as `opts` says: validates everything, then logs to MLflow and writes checkpoints
/// under `<output_dir>/<model>/{best,last}` after every epoch. The MLflow run ends FINISHED,
/// KILLED on Ctrl-C, or FAILED on error.
pub fn train(opts: &TrainOptions) -> Result<TrainReport> {
    let (device, config, data) = setup(opts)?;
    // Saved and logged as it runs, so that a resume on another device (or a later change to
    // what `auto` picks) keeps the layout, which decides the summation order and dropout's draws.
    let opts = &TrainOptions { memory_format: opts.memory_format.resolve(opts.model, device), ..opts.clone() };
    tch::manual_seed(opts.hyper.seed as i64);
    if device.is_cuda() {
        tch::Cuda::manual_seed_all(opts.hyper.seed);
    }
    let mut model = Model::new(&config, device)?;
    let channels_last = opts.memory_format.channels_last(opts.model, device);
    model.net.set_channels_last(channels_last)?;
    println!(
        "model: {} ({} trainable parameters, {} tensors{}), recipe {:?}",
        opts.model,
        model.net.graph().num_trainable(),
        model.net.params().len(),
        if channels_last { ", channels-last" } else { "" },
        opts.hyper.recipe
    );
    if let Some(file) = &opts.pretrained {
        // Before the MLflow run exists: a wrong file leaves nothing behind.
        let report = crate::pretrained::load_pretrained(file, &model.net)?;
        println!("{} ({})", report.summary(), file.display());
    }
    let h = &opts.hyper;
    let ema = if h.ema_decay > 0.0 { Some(Ema::new(&model.net, h.ema_decay, device)?) } else { None };
    let opt = Optimizer::for_net(&model.net, h.optimizer, h.lr, h.weight_decay)?;

    let (tracker, tracking_uri) = open_tracking(&opts.tracking_uri)?;
    let experiment_id = tracker.get_or_create_experiment(&opts.experiment)?;
    let mut tags = vec![("device".to_string(), device_name(device))];
    if let Some(commit) = git_commit() {
        tags.push(("mlflow.source.git.commit".to_string(), commit));
    }
    let run = tracker.create_run(&experiment_id, opts.model.name(), &tags)?;
    println!("MLflow run {} in experiment {:?} ({tracking_uri})", run.run_id(), opts.experiment);
    let mut params = opts.params();
    params.extend([
        ("train_size".to_string(), data.train.len().to_string()),
        ("val_size".to_string(), data.n_val.to_string()),
        ("trainable_params".to_string(), model.net.graph().num_trainable().to_string()),
        ("resolved_threads".to_string(), tch::get_num_threads().to_string()),
    ]);
    let session =
        Session { opts: opts.clone(), device, data, model, ema, opt, run, tracking_uri, state: Progress::default() };
    if let Err(e) = session.run.log_params(&params) {
        return Err(end_failed(&session.run, e.into()));
    }
    // An epoch-0 `last/` at once: a kill during the first epoch resumes this run too.
    if let Err(e) = session.save_last(None) {
        return Err(end_failed(&session.run, e));
    }
    session.fit()
}

/// Where `--resume` found the state of a run.
fn find_last_dir(target: &str, tracking_uri: &str) -> Result<PathBuf> {
    let path = Path::new(target);
    if path.is_dir() {
        for dir in [path.to_path_buf(), path.join("last")] {
            if let Some(d) = state::existing_dir(&dir) {
                return Ok(d);
            }
        }
        // An MLflow file-store run folder: <root>/<experiment id>/<run id>.
        if path.join("meta.yaml").is_file() {
            let run_id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let root = path.parent().and_then(Path::parent).unwrap_or(Path::new("."));
            return find_last_dir(&run_id, &root.display().to_string());
        }
        return Err(TrainerError::Config(format!(
            "--resume {target}: neither a checkpoint folder (with {}) nor an MLflow run folder",
            state::STATE_FILE
        )));
    }
    // A run id: its params say where its checkpoints are.
    let (tracker, _) = open_tracking(tracking_uri)?;
    let run = tracker.open_run(target)?;
    let params = run.params()?;
    let (Some(out), Some(model)) = (params.get("output_dir"), params.get("model")) else {
        return Err(TrainerError::Config(format!("--resume {target}: the run has no output_dir/model params")));
    };
    let last = Path::new(out).join(model).join("last");
    let dir = state::existing_dir(&last).ok_or_else(|| {
        TrainerError::Config(format!("--resume {target}: no resumable checkpoint in {}", last.display()))
    })?;
    let saved = TrainState::load(&dir)?;
    if saved.run_id != target {
        return Err(TrainerError::Config(format!(
            "--resume {target}: {} now holds run {} (a later run of {model} overwrote it)",
            dir.display(),
            saved.run_id
        )));
    }
    Ok(dir)
}

/// Options `--resume` may change; everything else comes from the saved run.
#[derive(Debug, Clone, Default)]
pub struct ResumeOverrides {
    pub device: Option<DeviceChoice>,
    pub threads: Option<usize>,
    pub progress: bool,
}

/// Continues the run `target` (a run id, its checkpoint folder, or its MLflow run folder)
/// from its last completed epoch, logging into the same MLflow run. `tracking_uri` is where
/// to look a run id up.
pub fn resume(target: &str, tracking_uri: &str, overrides: &ResumeOverrides) -> Result<TrainReport> {
    let dir = find_last_dir(target, tracking_uri)?;
    let saved = TrainState::load(&dir)?;
    let mut opts = saved.options.clone();
    opts.device = overrides.device.unwrap_or(opts.device);
    opts.threads = overrides.threads.or(opts.threads);
    opts.progress = overrides.progress;
    println!("resuming run {} after epoch {}/{} from {}", saved.run_id, saved.epoch, opts.hyper.epochs, dir.display());
    let (device, config, data) = setup(&opts)?;
    let mut model = Model::new(&config, device)?;
    // The layout the run started with (runs saved before it was resolved at the start say
    // `auto`, resolved again here).
    model.net.set_channels_last(opts.memory_format.channels_last(opts.model, device))?;
    load_weights(&dir.join(models::CHECKPOINT_WEIGHTS_FILE), &model.net)?;
    let h = &opts.hyper;
    let mut opt = Optimizer::for_net(&model.net, h.optimizer, h.lr, h.weight_decay)?;
    let moments = state::load_tensors(&dir.join(OPTIMIZER_FILE))?;
    opt.restore(saved.optimizer_steps, |k| moments.get(k).map(|t| t.to_device(device)))?;
    let ema = if h.ema_decay > 0.0 {
        let mut ema = Ema::new(&model.net, h.ema_decay, device)?;
        load_weights(&dir.join(EMA_FILE), ema.net())?;
        ema.set_updates(saved.ema_updates);
        Some(ema)
    } else {
        None
    };
    // Everything loaded. A kill just after a swap left a backup that no later epoch of this
    // run may remove (none is left after the last).
    for sub in ["last", "best"] {
        state::tidy(&opts.arch_dir().join(sub))?;
    }
    let (tracker, tracking_uri) = open_tracking(&saved.tracking_uri)?;
    let run = tracker.open_run(&saved.run_id)?;
    run.resume()?;
    // Epochs checkpointed but not logged (killed in between) are logged now, key by key: a
    // kill inside the file store's log_metrics leaves some keys of an epoch written. Logged
    // values are not repeated, so each metric has one value per epoch.
    let keys: Vec<&str> = saved.history.first().map_or(Vec::new(), |s| s.metrics().iter().map(|m| m.0).collect());
    let logged: Vec<Vec<i64>> =
        keys.iter().map(|k| Ok(run.metric_history(k)?.iter().map(|p| p.2).collect())).collect::<Result<_>>()?;
    for stats in &saved.history {
        let step = stats.epoch as i64;
        let missing: Vec<(&str, f64)> =
            stats.metrics().into_iter().zip(&logged).filter(|(_, l)| !l.contains(&step)).map(|(m, _)| m).collect();
        if !missing.is_empty() {
            run.log_metrics(&missing, step)?;
        }
    }
    let state = Progress { epoch: saved.epoch, history: saved.history, best: saved.best, seconds: saved.seconds };
    Session { opts, device, data, model, ema, opt, run, tracking_uri, state }.fit()
}

/// Ends `run` FAILED (KILLED after Ctrl-C) with the error as a tag; returns the error.
fn end_failed(run: &RunHandle, e: TrainerError) -> TrainerError {
    let status = if matches!(e, TrainerError::Interrupted) { RunStatus::Killed } else { RunStatus::Failed };
    // Best effort: the training error is the one worth reporting.
    let _ = run.set_tag("error", truncate(&e.to_string(), 4000));
    if let Err(end) = run.end(status) {
        eprintln!("warning: could not mark MLflow run {} {status}: {end}", run.run_id());
    }
    e
}

fn truncate(s: &str, max: usize) -> String {
    s.char_indices().take_while(|(i, _)| *i < max).map(|(_, c)| c).collect()
}

/// The commit of the source tree the trainer was built from, when it is a git checkout.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && s.len() == 40).then_some(s)
}

/// A seed for epoch `epoch` derived from the run's: shuffling, augmentation and dropout of an
/// epoch depend only on (seed, epoch), so a resumed run draws what an uninterrupted one would.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    data::Rng::new(seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

impl Session {
    fn progress_bar(&self, n: usize, epoch: usize) -> ProgressBar {
        if !self.opts.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(n as u64);
        let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(format!("epoch {epoch}/{}", self.opts.hyper.epochs));
        bar
    }

    /// The network that is evaluated and checkpointed as "best": the EMA when there is one.
    fn eval_net(&self) -> &Net {
        self.ema.as_ref().map_or(&self.model.net, Ema::net)
    }

    fn fit(mut self) -> Result<TrainReport> {
        match self.epochs().and_then(|()| self.finish()) {
            Ok(report) => Ok(report),
            Err(e) => Err(end_failed(&self.run, e)),
        }
    }

    fn epochs(&mut self) -> Result<()> {
        let h = self.opts.hyper.clone();
        let n_train = self.data.train.len();
        let per_epoch = DeviceSet::batches(n_train, h.batch_size);
        let total_steps = per_epoch * h.epochs;
        let eval_batch = h.batch_size.max(256);
        let augment = h.augment.then_some(Augment {
            rotation: h.rotation,
            translate: h.translate,
            scale: h.scale,
            elastic: h.elastic,
            elastic_sigma: h.elastic_sigma,
        });

        for epoch in self.state.epoch + 1..=h.epochs {
            let started = Instant::now();
            let seed = epoch_seed(h.seed, epoch);
            tch::manual_seed(seed as i64);
            let mut order: Vec<usize> = (0..n_train).collect();
            data::Rng::new(seed).shuffle(&mut order);
            let bar = self.progress_bar(n_train, epoch);
            let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
            let (mut seen, mut first_lr) = (0usize, None);
            let batches = self
                .data
                .train
                .epoch(&order, h.batch_size)
                .map_err(TrainerError::torch("copying the epoch's order to the device"))?;
            for (i, batch) in batches.enumerate() {
                if interrupted() {
                    return Err(TrainerError::Interrupted);
                }
                let step = (epoch - 1) * per_epoch + i;
                let lr = h.lr_at(epoch, step, total_steps);
                first_lr.get_or_insert(lr);
                self.opt.set_lr(lr);
                self.opt.set_beta1(h.beta1_at(step, total_steps));
                let torch = || TrainerError::torch("gathering a batch on the device");
                let (mut xb, yb) = batch.map_err(torch())?;
                if let Some(a) = &augment {
                    xb = tch::no_grad(|| a.apply(&xb))?;
                }
                let n = xb.size()[0] as usize;
                let loss = train_step_with(&self.model.net, &mut self.opt, &xb, &yb, h.label_smoothing, h.amp)?;
                if let Some(ema) = &mut self.ema {
                    ema.update(&self.model.net)?;
                }
                loss_sum = loss_sum.f_add(&loss.f_mul_scalar(n as f64).map_err(torch())?).map_err(torch())?;
                seen += n;
                bar.inc(n as u64);
                // Reading the loss synchronises a GPU: only now and then.
                if i % 20 == 19 || i + 1 == per_epoch {
                    let mean = f64::try_from(&loss_sum).map_err(torch())? / seen as f64;
                    if !mean.is_finite() {
                        return Err(TrainerError::Diverged { epoch, value: mean });
                    }
                    bar.set_message(format!("loss {mean:.4}"));
                }
            }
            bar.finish_and_clear();
            let train_seconds = started.elapsed().as_secs_f64();
            let train_loss =
                f64::try_from(&loss_sum).map_err(TrainerError::torch("reading the loss"))? / seen.max(1) as f64;
            if !train_loss.is_finite() {
                return Err(TrainerError::Diverged { epoch, value: train_loss });
            }
            let eval = evaluate_full(self.eval_net(), &self.data.val_x, &self.data.val_y, eval_batch, h.amp)?;
            // NaN without a validation split (--val-fraction 0): nothing is logged for it.
            let val_accuracy =
                if self.data.n_val == 0 { f64::NAN } else { eval.correct as f64 / self.data.n_val as f64 };
            let stats = EpochStats {
                epoch,
                train_loss,
                val_loss: eval.loss,
                val_accuracy,
                val_error: 1.0 - val_accuracy,
                lr: first_lr.unwrap_or(h.lr),
                seconds: started.elapsed().as_secs_f64(),
                images_per_second: seen as f64 / train_seconds.max(1e-9),
            };
            println!("{}", stats.line(h.epochs));
            self.state.seconds += stats.seconds;
            self.state.epoch = epoch;
            self.state.history.push(stats.clone());
            let better =
                h.keep == Keep::Last || self.state.best.as_ref().is_none_or(|b| stats.val_accuracy > b.val_accuracy);
            if better {
                self.state.best = Some(stats.clone());
                self.save_best(&stats, &eval.confusion)?;
            }
            // Checkpoint first, metrics second: a kill in between is repaired by --resume,
            // which logs the checkpointed epochs missing from the run.
            self.save_last(Some(&stats))?;
            crate::fault::point("before_metrics");
            self.run.log_metrics(&stats.metrics(), epoch as i64)?;
        }
        Ok(())
    }

    /// `None`: the initial weights (epoch 0).
    fn meta(&self, stats: Option<&EpochStats>) -> CheckpointMeta {
        CheckpointMeta {
            model: self.model.net.config().clone(),
            epoch: stats.map_or(0, |s| s.epoch),
            val_accuracy: stats.map(|s| s.val_accuracy),
            val_loss: stats.map(|s| s.val_loss),
            run_id: Some(self.run.run_id().to_string()),
            tracking_uri: Some(self.tracking_uri.clone()),
            producer: PRODUCER.to_string(),
        }
    }

    fn config_json(&self) -> String {
        serde_json::to_string_pretty(&self.opts).expect("plain data serialises")
    }

    /// `best/`: the evaluated weights (the EMA when there is one), their evaluation, the config.
    fn save_best(&self, stats: &EpochStats, confusion: &Confusion) -> Result<()> {
        let meta = self.meta(Some(stats));
        state::replace_dir(&self.opts.arch_dir().join("best"), |dir| {
            save_checkpoint(dir, self.eval_net(), &meta)?;
            data::atomic_write(&dir.join(CONFIG_FILE), self.config_json().as_bytes())?;
            data::atomic_write(&dir.join(CONFUSION_CSV), confusion.to_csv().as_bytes())?;
            data::atomic_write(&dir.join(CONFUSION_PNG), &confusion.to_png()?)?;
            data::atomic_write(&dir.join(PER_CLASS_CSV), confusion.per_class_csv().as_bytes())?;
            Ok(())
        })
    }

    /// `last/`: everything `--resume` needs.
    fn save_last(&self, stats: Option<&EpochStats>) -> Result<()> {
        let meta = self.meta(stats);
        let saved = TrainState {
            run_id: self.run.run_id().to_string(),
            tracking_uri: self.tracking_uri.clone(),
            options: self.opts.clone(),
            epoch: self.state.epoch,
            optimizer_steps: self.opt.steps(),
            ema_updates: self.ema.as_ref().map_or(0, Ema::updates),
            history: self.state.history.clone(),
            best: self.state.best.clone(),
            seconds: self.state.seconds,
        };
        state::replace_dir(&self.opts.arch_dir().join("last"), |dir| {
            save_checkpoint(dir, &self.model.net, &meta)?;
            data::atomic_write(&dir.join(CONFIG_FILE), self.config_json().as_bytes())?;
            state::save_tensors(&dir.join(OPTIMIZER_FILE), &self.opt.state_tensors())?;
            if let Some(ema) = &self.ema {
                crate::checkpoint::save_weights(&dir.join(EMA_FILE), ema.net())?;
            }
            // Written last: a folder with state.json is complete.
            data::atomic_write(&dir.join(state::STATE_FILE), saved.to_json().as_bytes())?;
            Ok(())
        })
    }

    /// Logs the best epoch's checkpoint and evaluation, then ends the run FINISHED.
    fn finish(&self) -> Result<TrainReport> {
        let best = self.state.best.clone().expect("at least one epoch ran");
        let best_dir = self.opts.arch_dir().join("best");
        for file in [models::CHECKPOINT_META_FILE, models::CHECKPOINT_WEIGHTS_FILE] {
            log_artifact_retrying(&self.run, &best_dir.join(file), Some("checkpoint"))?;
        }
        for file in [CONFIG_FILE, CONFUSION_CSV, CONFUSION_PNG, PER_CLASS_CSV] {
            log_artifact_retrying(&self.run, &best_dir.join(file), None)?;
        }
        let mut tags = vec![("best_epoch", best.epoch.to_string())];
        if best.validated() {
            tags.push(("best_accuracy", best.val_accuracy.to_string()));
        }
        self.run.set_tags(&tags)?;
        self.run.end(RunStatus::Finished)?;
        Ok(TrainReport {
            run_id: self.run.run_id().to_string(),
            tracking_uri: self.tracking_uri.clone(),
            experiment_id: self.run.experiment_id().to_string(),
            best_dir,
            last_dir: self.opts.arch_dir().join("last"),
            best,
            epochs: self.state.history.clone(),
            device: self.device,
            seconds: self.state.seconds,
        })
    }
}

pub const CONFUSION_CSV: &str = "confusion_matrix.csv";
pub const CONFUSION_PNG: &str = "confusion_matrix.png";
pub const PER_CLASS_CSV: &str = "per_class_accuracy.csv";

/// Artifacts are not buffered like metrics: while the server is away, retry for a while.
fn log_artifact_retrying(run: &RunHandle, file: &Path, subdir: Option<&str>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pause = Duration::from_millis(500);
    loop {
        match run.log_artifact(file, subdir) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                eprintln!("warning: uploading {} failed ({e}); retrying in {pause:?}", file.display());
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
