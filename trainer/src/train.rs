//! The training recipe of the seed project (Adam, lr x0.75 per epoch, batch 64, stratified
//! 80/20 split, pixel/255, cross-entropy), with checkpoints and MLflow tracking.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use models::{Arch, CheckpointMeta, ModelConfig, ParamKind};
use tch::{COptimizer, Device, Kind, Tensor};
use tracking::{FileStore, RunHandle, RunStatus, Tracker};

use crate::checkpoint::{save_checkpoint, PRODUCER};
use crate::error::{Result, TrainerError};
use crate::net::{Model, Net};

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
    /// The CPU, with --threads libtorch threads.
    Cpu,
    /// The first CUDA GPU; an error when there is none.
    Cuda,
}

/// Resolves `--device`; asking for CUDA without a usable GPU is an error, not a silent CPU run.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(TrainerError::Config(
            "--device cuda: libtorch sees no CUDA device (no GPU, no driver, or a CPU-only libtorch); use --device cpu"
                .into(),
        )),
    }
}

/// Human name of a device, as printed and logged.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Everything one training run needs (the `trainer` command line, resolved).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub arch: Arch,
    pub epochs: usize,
    /// Folder, Kaggle zip or `train.csv`.
    pub data: PathBuf,
    pub batch_size: usize,
    pub lr: f64,
    /// Learning rate factor applied after each epoch.
    pub lr_decay: f64,
    pub val_fraction: f64,
    pub seed: u64,
    pub in_channels: usize,
    pub device: DeviceChoice,
    /// libtorch intra-op threads; `None` keeps libtorch's default.
    pub threads: Option<usize>,
    pub output_dir: PathBuf,
    pub mlruns: PathBuf,
    pub experiment: String,
    /// Use only the first N rows of the data.
    pub limit: Option<usize>,
    /// Safetensors file of torchvision state_dict tensors to start from (see [`crate::pretrained`]).
    pub pretrained: Option<PathBuf>,
    /// Draw progress bars (on stderr, only when it is a terminal).
    pub progress: bool,
}

impl TrainOptions {
    /// The seed project's recipe for `arch` on `data`.
    pub fn new(arch: Arch, data: impl Into<PathBuf>) -> Self {
        TrainOptions {
            arch,
            epochs: 1,
            data: data.into(),
            batch_size: 64,
            lr: 1e-3,
            lr_decay: 0.75,
            val_fraction: 0.2,
            seed: 42,
            in_channels: 1,
            device: DeviceChoice::Auto,
            threads: None,
            output_dir: PathBuf::from("checkpoints"),
            mlruns: PathBuf::from("mlruns"),
            experiment: "Default".into(),
            limit: None,
            pretrained: None,
            progress: true,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainerError::Config(m));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(format!(
                "--batch-size must be at least 2 (BatchNorm needs 2 samples), got {}",
                self.batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.lr_decay.is_finite() && self.lr_decay > 0.0) {
            return bad(format!("--lr-decay must be a positive number, got {}", self.lr_decay));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad(format!("--val-fraction must be strictly between 0 and 1, got {}", self.val_fraction));
        }
        if self.threads == Some(0) {
            return bad("--threads must be at least 1".into());
        }
        if self.limit == Some(0) {
            return bad("--limit must be at least 1".into());
        }
        if self.experiment.trim().is_empty() {
            return bad("--experiment must not be empty".into());
        }
        Ok(())
    }
}

/// The numbers of one epoch, as printed and logged to MLflow.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_error: f64,
    /// Learning rate used during the epoch.
    pub lr: f64,
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

impl EpochStats {
    /// The line the trainer prints after each epoch.
    pub fn line(&self, epochs: usize) -> String {
        format!(
            "epoch {}/{epochs}: train_loss {:.6} val_loss {:.6} val_error {:.6} val_accuracy {:.6} ({:.0} img/s)",
            self.epoch, self.train_loss, self.val_loss, self.val_error, self.val_accuracy, self.images_per_second
        )
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub run_id: String,
    /// Absolute path of the MLflow file store.
    pub tracking_uri: String,
    pub experiment_id: String,
    pub best_dir: PathBuf,
    pub last_dir: PathBuf,
    pub best: EpochStats,
    pub epochs: Vec<EpochStats>,
    pub device: Device,
}

/// Training data, validated and split, before anything is written.
struct Prepared {
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    n_train: usize,
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
    let (train_idx, val_idx) = data::stratified_split(labels, opts.val_fraction, opts.seed);
    if train_idx.len() < 2 || val_idx.is_empty() {
        return Err(dataset_err(format!(
            "{} rows give {} training and {} validation images with --val-fraction {}; need at least 2 and 1",
            ds.len(),
            train_idx.len(),
            val_idx.len(),
            opts.val_fraction
        )));
    }
    let side = data::IMAGE_SIDE as i64;
    let to_tensors = |idx: &[usize]| -> Result<(Tensor, Tensor)> {
        let torch = TrainerError::torch("copying the data set to the device");
        let x = Tensor::from_slice(&ds.to_f32(idx))
            .f_reshape([idx.len() as i64, 1, side, side])
            .and_then(|t| t.f_to_device(device))
            .map_err(torch)?;
        let y: Vec<i64> = idx.iter().map(|&i| i64::from(labels[i])).collect();
        let y =
            Tensor::from_slice(&y).f_to_device(device).map_err(TrainerError::torch("copying labels to the device"))?;
        Ok((x, y))
    };
    let (train_x, train_y) = to_tensors(&train_idx)?;
    let (val_x, val_y) = to_tensors(&val_idx)?;
    Ok(Prepared { train_x, train_y, val_x, val_y, n_train: train_idx.len(), n_val: val_idx.len(), source: ds.source })
}

/// Mean cross-entropy and number of correct predictions of `net` in eval mode.
pub fn evaluate(net: &Net, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<(f64, usize)> {
    let n = x.size()[0];
    if n == 0 {
        return Ok((f64::NAN, 0));
    }
    tch::no_grad(|| {
        let (mut loss_sum, mut correct) = (0.0f64, 0i64);
        let mut start = 0i64;
        while start < n {
            let len = (batch_size as i64).min(n - start);
            let torch = TrainerError::torch("evaluation");
            let xb = x.f_narrow(0, start, len).map_err(torch)?;
            let yb = y.f_narrow(0, start, len).map_err(TrainerError::torch("evaluation"))?;
            let logits = net.f_forward_t(&xb, false)?;
            let (loss, hits) = (|| -> Result<(f64, i64), tch::TchError> {
                let loss = f64::try_from(cross_entropy(&logits, &yb)?)?;
                let hits = i64::try_from(logits.f_argmax(-1, false)?.f_eq_tensor(&yb)?.f_sum(Kind::Int64)?)?;
                Ok((loss, hits))
            })()
            .map_err(TrainerError::torch("evaluation loss"))?;
            loss_sum += loss * len as f64;
            correct += hits;
            start += len;
        }
        Ok((loss_sum / n as f64, correct as usize))
    })
}

/// Mean cross-entropy of `logits` against class indices, as `torch.nn.functional.cross_entropy`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_cross_entropy_loss(targets, None::<&Tensor>, tch::Reduction::Mean, -100, 0.0)
}

/// Adam over the trainable tensors of `net` (torch's defaults: betas 0.9/0.999, eps 1e-8).
pub fn adam(net: &Net, lr: f64) -> Result<COptimizer> {
    let mut opt = COptimizer::adam(lr, 0.9, 0.999, 0.0, 1e-8, false).map_err(TrainerError::torch("creating Adam"))?;
    for (spec, t) in net.params() {
        if spec.kind == ParamKind::Trainable {
            opt.add_parameters(t, 0).map_err(TrainerError::torch(format!("adding {} to Adam", spec.name)))?;
        }
    }
    Ok(opt)
}

/// One optimisation step on a batch in training mode; returns the batch's mean loss.
pub fn train_step(net: &Net, opt: &mut COptimizer, x: &Tensor, y: &Tensor) -> Result<f64> {
    let logits = net.f_forward_t(x, true)?;
    (|| -> Result<f64, tch::TchError> {
        let loss = cross_entropy(&logits, y)?;
        opt.zero_grad()?;
        loss.f_backward()?;
        opt.step()?;
        f64::try_from(&loss.f_detach()?)
    })()
    .map_err(TrainerError::torch("training step"))
}

/// Trains as `opts` says: validates everything, then logs to MLflow and writes checkpoints
/// under `<output_dir>/<arch>/{best,last}`. The MLflow run ends FINISHED, or FAILED on error.
pub fn train(opts: &TrainOptions) -> Result<TrainReport> {
    opts.validate()?;
    let config = ModelConfig { in_channels: opts.in_channels, ..ModelConfig::new(opts.arch) };
    config.validate()?;
    let device = resolve_device(opts.device)?;
    if let Some(t) = opts.threads {
        tch::set_num_threads(t as i32);
    }
    // All input is checked before the first file is written.
    let prepared = prepare_data(opts, device)?;
    println!(
        "data: {} -> {} training, {} validation images (val fraction {}, seed {})",
        prepared.source, prepared.n_train, prepared.n_val, opts.val_fraction, opts.seed
    );
    println!("device: {}, threads: {}", device_name(device), tch::get_num_threads());

    tch::manual_seed(opts.seed as i64);
    if device.is_cuda() {
        tch::Cuda::manual_seed_all(opts.seed);
    }
    let model = Model::new(&config, device)?;
    println!(
        "model: {} ({} trainable parameters, {} tensors)",
        opts.arch,
        model.net.graph().num_trainable(),
        model.net.params().len()
    );
    if let Some(file) = &opts.pretrained {
        // Before the MLflow run exists: a wrong file leaves nothing behind.
        let report = crate::pretrained::load_pretrained(file, &model.net)?;
        println!("{} ({})", report.summary(), file.display());
    }

    let store = FileStore::new(&opts.mlruns)?;
    let tracking_uri = store.root().display().to_string();
    let experiment_id = store.get_or_create_experiment(&opts.experiment)?;
    let run = store.create_run(&experiment_id, opts.arch.name(), &[])?;
    println!("MLflow run {} in experiment {:?} ({tracking_uri})", run.run_id(), opts.experiment);

    let result = log_params(&run, opts, &config, device, &prepared, &model.net)
        .and_then(|()| fit(opts, &model.net, &prepared, &run, &tracking_uri));
    match result {
        Ok((epochs, best)) => {
            let arch_dir = opts.output_dir.join(opts.arch.name());
            let best_dir = arch_dir.join("best");
            for file in [models::CHECKPOINT_META_FILE, models::CHECKPOINT_WEIGHTS_FILE] {
                if let Err(e) = run.log_artifact(best_dir.join(file), Some("checkpoint")) {
                    let _ = run.end(RunStatus::Failed);
                    return Err(e.into());
                }
            }
            run.end(RunStatus::Finished)?;
            Ok(TrainReport {
                run_id: run.run_id().to_string(),
                tracking_uri,
                experiment_id,
                best_dir,
                last_dir: arch_dir.join("last"),
                best,
                epochs,
                device,
            })
        }
        Err(e) => {
            // Best effort: the training error is the one worth reporting.
            let _ = run.set_tag("error", truncate(&e.to_string(), 4000));
            let _ = run.end(RunStatus::Failed);
            Err(e)
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.char_indices().take_while(|(i, _)| *i < max).map(|(_, c)| c).collect()
}

fn log_params(
    run: &RunHandle,
    opts: &TrainOptions,
    config: &ModelConfig,
    device: Device,
    p: &Prepared,
    net: &Net,
) -> Result<()> {
    let abs = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string();
    let params: Vec<(&str, String)> = vec![
        ("model", opts.arch.name().to_string()),
        ("epochs", opts.epochs.to_string()),
        ("data", abs(&opts.data)),
        ("batch_size", opts.batch_size.to_string()),
        ("lr", opts.lr.to_string()),
        ("lr_decay", opts.lr_decay.to_string()),
        ("val_fraction", opts.val_fraction.to_string()),
        ("seed", opts.seed.to_string()),
        ("in_channels", config.in_channels.to_string()),
        ("num_classes", config.num_classes.to_string()),
        ("image_size", config.image_size.to_string()),
        ("device", device_name(device)),
        ("threads", tch::get_num_threads().to_string()),
        ("output_dir", abs(&opts.output_dir)),
        ("mlruns", abs(&opts.mlruns)),
        ("experiment", opts.experiment.clone()),
        ("limit", opts.limit.map_or_else(|| "none".to_string(), |l| l.to_string())),
        ("pretrained", opts.pretrained.as_deref().map_or_else(|| "none".to_string(), abs)),
        ("optimizer", "adam".into()),
        ("train_size", p.n_train.to_string()),
        ("val_size", p.n_val.to_string()),
        ("trainable_params", net.graph().num_trainable().to_string()),
    ];
    run.log_params(&params)?;
    Ok(())
}

fn progress_bar(opts: &TrainOptions, n: usize, epoch: usize) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("epoch {epoch}/{}", opts.epochs));
    bar
}

/// The epoch loop; returns every epoch's stats and the best one.
fn fit(
    opts: &TrainOptions,
    net: &Net,
    p: &Prepared,
    run: &RunHandle,
    tracking_uri: &str,
) -> Result<(Vec<EpochStats>, EpochStats)> {
    let arch_dir = opts.output_dir.join(opts.arch.name());
    let device = net.device();
    let mut lr = opts.lr;
    let mut opt = adam(net, lr)?;
    let mut rng = data::Rng::new(opts.seed);
    let mut order: Vec<i64> = (0..p.n_train as i64).collect();
    let mut history: Vec<EpochStats> = Vec::with_capacity(opts.epochs);
    let mut best: Option<EpochStats> = None;
    let eval_batch = opts.batch_size.max(256);

    for epoch in 1..=opts.epochs {
        let started = Instant::now();
        rng.shuffle(&mut order);
        let bar = progress_bar(opts, p.n_train, epoch);
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        for chunk in order.chunks(opts.batch_size) {
            // A last batch of one sample cannot be batch-normalised in training mode.
            if chunk.len() < 2 {
                continue;
            }
            let torch = TrainerError::torch("selecting a batch");
            let idx = Tensor::from_slice(chunk).f_to_device(device).map_err(torch)?;
            let xb = p.train_x.f_index_select(0, &idx).map_err(TrainerError::torch("selecting a batch"))?;
            let yb = p.train_y.f_index_select(0, &idx).map_err(TrainerError::torch("selecting a batch"))?;
            let loss = train_step(net, &mut opt, &xb, &yb)?;
            if !loss.is_finite() {
                return Err(TrainerError::Diverged { epoch, value: loss });
            }
            loss_sum += loss * chunk.len() as f64;
            seen += chunk.len();
            bar.inc(chunk.len() as u64);
            bar.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, correct) = evaluate(net, &p.val_x, &p.val_y, eval_batch)?;
        let val_accuracy = correct as f64 / p.n_val as f64;
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            val_loss,
            val_accuracy,
            val_error: 1.0 - val_accuracy,
            lr,
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: seen as f64 / train_seconds.max(1e-9),
        };
        println!("{}", stats.line(opts.epochs));

        let meta = CheckpointMeta {
            model: net.config().clone(),
            epoch,
            val_accuracy: Some(val_accuracy),
            val_loss: Some(val_loss),
            run_id: Some(run.run_id().to_string()),
            tracking_uri: Some(tracking_uri.to_string()),
            producer: PRODUCER.to_string(),
        };
        save_checkpoint(&arch_dir.join("last"), net, &meta)?;
        if best.as_ref().is_none_or(|b| stats.val_accuracy > b.val_accuracy) {
            save_checkpoint(&arch_dir.join("best"), net, &meta)?;
            best = Some(stats.clone());
        }
        run.log_metrics(
            &[
                ("loss", stats.val_loss),
                ("error", stats.val_error),
                ("accuracy", stats.val_accuracy),
                ("train_loss", stats.train_loss),
                ("lr", stats.lr),
                ("epoch_seconds", stats.seconds),
                ("images_per_second", stats.images_per_second),
            ],
            epoch as i64,
        )?;
        history.push(stats);

        lr *= opts.lr_decay;
        opt.set_learning_rate(lr).map_err(TrainerError::torch("setting the learning rate"))?;
    }
    let best = best.expect("at least one epoch ran");
    Ok((history, best))
}
