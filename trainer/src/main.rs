//! `trainer`: trains zoo architectures on the Digit Recognizer data, checkpoints every epoch,
//! keeps the best checkpoint by validation accuracy and records each run in MLflow.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use models::Arch;
use trainer::{DeviceChoice, Hyper, Keep, OptimizerKind, Recipe, ResumeOverrides, Schedule, TrainOptions, TrainReport};

/// Train digit classifiers (Kaggle "Digit Recognizer") with libtorch.
///
/// `--recipe seed` (default) is the seed project's: Adam lr 1e-3, lr x0.75 per epoch, batch
/// 64, no augmentation. `--recipe strong`: random affine augmentation on the device, AdamW
/// (weight decay 0.05) with a one-cycle schedule per batch (peak lr 3e-3), label smoothing
/// 0.1, an EMA of the weights (decay 0.999) that is evaluated and checkpointed. Every value can
/// be changed by its flag. Checkpoints go to <output-dir>/<model>/best (best validation
/// accuracy) and .../last (after every epoch, what --resume continues from).
///
/// Tracking: MLflow file store --mlruns (default ./mlruns), or the server in
/// MLFLOW_TRACKING_URI / --tracking-uri (http://host:port).
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about)]
struct Cli {
    /// Architectures to train, comma-separated; each is its own MLflow run, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', required_unless_present = "resume")]
    model: Vec<Arch>,
    /// Continue an interrupted run: its MLflow run id, its checkpoint folder
    /// (<output-dir>/<model>/last) or its MLflow file-store run folder. Uses the run's saved
    /// configuration; only --device, --threads and --no-progress may be given with it.
    #[arg(long, value_name = "RUN", conflicts_with = "model")]
    resume: Option<String>,
    /// Defaults for every training value below.
    #[arg(long, value_enum, default_value_t = Recipe::Seed)]
    recipe: Recipe,
    /// Training data: a folder holding train.csv, the Kaggle digit-recognizer.zip, or a train.csv file.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    #[command(flatten)]
    hyper: HyperFlags,
    /// Where to train; `cuda` fails if libtorch sees no GPU.
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// libtorch CPU threads (default: libtorch's choice, one per physical core). On a machine
    /// busy with other work, fewer threads can be much faster (OpenMP barriers stall).
    #[arg(long)]
    threads: Option<usize>,
    /// Checkpoints are written to <output-dir>/<model>/{best,last}/.
    #[arg(long, default_value = "checkpoints")]
    output_dir: PathBuf,
    /// MLflow file store (default ./mlruns unless MLFLOW_TRACKING_URI is set).
    #[arg(long)]
    mlruns: Option<PathBuf>,
    /// MLflow tracking URI: a file store path or http(s)://host:port of an MLflow server
    /// (default: MLFLOW_TRACKING_URI, else --mlruns).
    #[arg(long)]
    tracking_uri: Option<String>,
    /// MLflow experiment name (created if missing).
    #[arg(long, default_value = "Default")]
    experiment: String,
    /// Use only the first N rows of the data (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Start from these weights instead of a random init: a safetensors file of torchvision
    /// state_dict tensors (e.g. ImageNet weights; convert a hub .pth with scripts/convert_pth.py).
    /// Tensors of matching name and shape are copied, a 3-channel first convolution is summed
    /// to 1 channel, the classifier of another class count keeps its fresh init.
    #[arg(long, value_name = "FILE")]
    pretrained: Option<PathBuf>,
    /// Do not draw progress bars (they go to stderr, and only when it is a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// Training values; unset ones come from --recipe.
#[derive(Debug, clap::Args)]
struct HyperFlags {
    /// Number of passes over the training split [default: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Training batch size (validation runs in batches of at least 256) [seed, strong: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// [seed: adam, strong: adamw].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// Learning rate: of the first epoch (step schedule) or the peak (onecycle, cosine) [seed: 1e-3, strong: 3e-3].
    #[arg(long)]
    lr: Option<f64>,
    /// [seed: step, strong: onecycle].
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Factor applied to the learning rate after each epoch (step schedule) [seed: 0.75].
    #[arg(long)]
    lr_decay: Option<f64>,
    /// Share of the steps spent warming up (onecycle, cosine) [strong: 0.25].
    #[arg(long)]
    warmup: Option<f64>,
    /// Onecycle also cycles Adam's beta1, 0.95 -> 0.85 -> 0.95 against the learning rate, as
    /// torch's OneCycleLR does by default [off: beta1 stays 0.9].
    #[arg(long)]
    cycle_momentum: bool,
    /// Weight decay of weights with 2+ dimensions (not biases, BatchNorm) [seed: 0, strong: 0.05].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Label smoothing of the training loss [seed: 0, strong: 0.1].
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Decay of the EMA of the weights, 0 for none [seed: 0, strong: 0.999].
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Random affine augmentation of training batches [strong].
    #[arg(long, overrides_with = "no_augment")]
    augment: bool,
    /// No augmentation [seed].
    #[arg(long)]
    no_augment: bool,
    /// Largest rotation in degrees [12].
    #[arg(long)]
    rotation: Option<f64>,
    /// Largest shift in pixels per axis [2.5].
    #[arg(long)]
    translate: Option<f64>,
    /// Largest relative zoom: scale in [1-s, 1+s] [0.1].
    #[arg(long)]
    scale: Option<f64>,
    /// Elastic distortion on top of the affine one: strength α in pixels, 0 for none
    /// (Simard et al. 2003 used 34 with σ 4) [0].
    #[arg(long)]
    elastic: Option<f64>,
    /// Gaussian σ in pixels smoothing the elastic displacement field [4].
    #[arg(long)]
    elastic_sigma: Option<f64>,
    /// Share of each class held out for validation [0.2].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Seed of the train/validation split; the same for every model of an ensemble [42].
    #[arg(long)]
    split_seed: Option<u64>,
    /// Seed of the shuffling, the augmentation and the weight initialisation [42].
    #[arg(long)]
    seed: Option<u64>,
    /// Model input channels: 1 (gray), or 3 to repeat gray to RGB as the seed project did [1].
    #[arg(long)]
    in_channels: Option<usize>,
    /// bf16 autocast (forward pass and loss) on CUDA, or on the CPU where it is mostly slower.
    #[arg(long)]
    amp: bool,
    /// Which epoch best/ keeps: `best` validation accuracy (chosen on the split that reports it)
    /// or `last` (a fixed-length recipe: nothing chosen on the validation split) [best].
    #[arg(long, value_enum)]
    keep: Option<Keep>,
}

impl HyperFlags {
    fn resolve(&self, recipe: Recipe) -> Hyper {
        let mut h = Hyper::new(recipe);
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { h.$f = v; } )* };
        }
        set!(epochs, batch_size, optimizer, lr, schedule, lr_decay, warmup, weight_decay, label_smoothing);
        set!(ema_decay, rotation, translate, scale, elastic, elastic_sigma, val_fraction, split_seed, seed, in_channels, keep);
        if self.augment || self.no_augment {
            h.augment = self.augment;
        }
        h.amp |= self.amp;
        h.cycle_momentum |= self.cycle_momentum;
        h
    }

    fn any_set(&self) -> bool {
        let f = self;
        [f.epochs.is_some(), f.batch_size.is_some(), f.optimizer.is_some(), f.lr.is_some(), f.schedule.is_some()]
            .into_iter()
            .chain([f.lr_decay.is_some(), f.warmup.is_some(), f.weight_decay.is_some(), f.label_smoothing.is_some()])
            .chain([f.ema_decay.is_some(), f.rotation.is_some(), f.translate.is_some(), f.scale.is_some()])
            .chain([f.elastic.is_some(), f.elastic_sigma.is_some()])
            .chain([f.val_fraction.is_some(), f.split_seed.is_some(), f.seed.is_some(), f.in_channels.is_some()])
            .chain([f.keep.is_some()])
            .chain([f.augment, f.no_augment, f.amp, f.cycle_momentum])
            .any(|b| b)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = trainer::train::install_interrupt_handler() {
        eprintln!("warning: {e}");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if trainer::train::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn tracking_uri(cli: &Cli) -> String {
    if let Some(u) = &cli.tracking_uri {
        return u.clone();
    }
    if let Some(p) = &cli.mlruns {
        return p.display().to_string();
    }
    std::env::var("MLFLOW_TRACKING_URI").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "mlruns".into())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut uri = tracking_uri(&cli);
    if !uri.starts_with("http://") && !uri.starts_with("https://") && !uri.starts_with("file:") {
        // Logged and saved with the run: absolute, so a resume from elsewhere finds it.
        uri = std::path::absolute(&uri).map_or(uri, |p| p.display().to_string());
    }
    if let Some(target) = &cli.resume {
        if cli.hyper.any_set() || cli.data.is_some() || cli.limit.is_some() || cli.pretrained.is_some() {
            bail!("--resume continues with the run's saved configuration; only --device, --threads and --no-progress may be given with it");
        }
        let overrides = ResumeOverrides { device: cli.device, threads: cli.threads, progress: !cli.no_progress };
        let report = trainer::resume(target, &uri, &overrides).with_context(|| format!("resuming {target} failed"))?;
        print_report(&report, &uri);
        return Ok(ExitCode::SUCCESS);
    }
    let hyper = cli.hyper.resolve(cli.recipe);
    let f = &cli.hyper;
    if !hyper.augment && [f.rotation, f.translate, f.scale, f.elastic, f.elastic_sigma].iter().any(Option::is_some) {
        // They would be logged as if they had shaped the training, and silently not.
        bail!("--rotation, --translate, --scale, --elastic and --elastic-sigma shape the augmentation, which is off (--recipe seed or --no-augment): add --augment or use --recipe strong");
    }
    let data = cli.data.clone().expect("clap requires --data without --resume");
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let base = TrainOptions {
        hyper,
        data: abs(&data),
        limit: cli.limit,
        pretrained: cli.pretrained.as_ref().map(abs),
        device: cli.device.unwrap_or(DeviceChoice::Auto),
        threads: cli.threads,
        output_dir: abs(&cli.output_dir),
        tracking_uri: uri.clone(),
        experiment: cli.experiment.clone(),
        progress: !cli.no_progress,
        ..TrainOptions::new(cli.model[0], &data)
    };

    if cli.model.len() == 1 {
        let opts = TrainOptions { model: cli.model[0], ..base };
        let report = trainer::train(&opts).with_context(|| format!("training {} failed", opts.model))?;
        print_report(&report, &uri);
        return Ok(ExitCode::SUCCESS);
    }

    // Several architectures: one run each; a failure is reported and the next one starts.
    let mut rows = Vec::new();
    for &arch in &cli.model {
        if trainer::train::interrupted() {
            rows.push((arch, Err("not started (interrupted)".to_string()), 0.0));
            continue;
        }
        println!("\n=== {arch} ===");
        let started = Instant::now();
        let opts = TrainOptions { model: arch, ..base.clone() };
        let result = trainer::train(&opts).map_err(|e| {
            eprintln!("error: training {arch} failed: {e}");
            e.to_string()
        });
        if let Ok(report) = &result {
            print_report(report, &uri);
        }
        rows.push((arch, result, started.elapsed().as_secs_f64()));
    }
    println!("\n{}", summary_table(&rows));
    let failed = rows.iter().filter(|(_, r, _)| r.is_err()).count();
    if failed > 0 {
        eprintln!("{failed} of {} trainings failed", rows.len());
        return Ok(if trainer::train::interrupted() { ExitCode::from(130) } else { ExitCode::FAILURE });
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &TrainReport, uri: &str) {
    println!(
        "best: epoch {} val_accuracy {:.6} val_loss {:.6} -> {}",
        report.best.epoch,
        report.best.val_accuracy,
        report.best.val_loss,
        report.best_dir.display()
    );
    println!("last: {}", report.last_dir.display());
    println!("MLflow run id: {}", report.run_id);
    if !uri.starts_with("http") {
        println!("view it: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {}", report.tracking_uri);
    }
}

/// Markdown table: arch, best validation accuracy, epochs, wall time, training img/s.
fn summary_table(rows: &[(Arch, Result<TrainReport, String>, f64)]) -> String {
    let mut s = String::from("| arch | best val accuracy | epochs | time (s) | img/s | status |\n|---|---:|---:|---:|---:|---|\n");
    for (arch, result, secs) in rows {
        match result {
            Ok(r) => s.push_str(&format!(
                "| {arch} | {:.4} | {} | {secs:.1} | {:.0} | ok |\n",
                r.best.val_accuracy,
                r.epochs.len(),
                r.images_per_second()
            )),
            Err(e) => {
                let first = e.lines().next().unwrap_or_default();
                s.push_str(&format!("| {arch} | - | - | {secs:.1} | - | failed: {first} |\n"));
            }
        }
    }
    s
}
