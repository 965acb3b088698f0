//! `trainer`: trains zoo architectures on the Digit Recognizer data, checkpoints every epoch,
//! keeps the best checkpoint by validation accuracy and records each run in MLflow.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use models::Arch;
use trainer::{
    DeviceChoice, Hyper, Keep, MemoryFormat, OptimizerKind, Recipe, ResumeOverrides, Schedule, TrainOptions,
    TrainReport,
};

use tracking::cli::{self, TRACKING_URI_ENV};

#[derive(Debug, Parser)]
#[command(
    name = "trainer",
    version,
    about = "Train digit classifiers (Kaggle \"Digit Recognizer\") with libtorch.",
    long_about = long_about()
)]
struct Cli {
    /// Architectures to train, comma-separated; each is its own MLflow run, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', required_unless_present_any = ["resume", "list_archs", "print_config"])]
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
    #[arg(long, required_unless_present_any = ["resume", "list_archs", "print_config"])]
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
    /// Memory layout of convolution weights and activations. auto: channels-last on the CPU for
    /// cnn_digits (measured faster), NCHW otherwise. Channels-last trains to equivalent but not
    /// bit-identical results.
    #[arg(long, value_enum, default_value = "auto")]
    memory_format: MemoryFormat,
    /// Checkpoints are written to <output-dir>/<model>/{best,last}/.
    #[arg(long, default_value = "checkpoints")]
    output_dir: PathBuf,
    /// MLflow file store (default ./mlruns unless the tracking URI's environment variable is
    /// set); the --tracking-uri flag overrides it, the environment variable does not.
    #[arg(long)]
    mlruns: Option<PathBuf>,
    /// MLflow tracking URI: a file store path or http(s)://host:port of an MLflow server
    /// (default: --mlruns, else the environment variable, else ./mlruns).
    #[arg(long, value_name = "URI", env = TRACKING_URI_ENV)]
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
    /// Print the architectures, one name per line, and exit: every one, or only those
    /// torchvision also has. Scripts ask for the list here rather than keeping their own.
    #[arg(long, value_enum, value_name = "WHICH", num_args = 0..=1, default_missing_value = "all")]
    list_archs: Option<ArchList>,
    /// Print the training values --recipe and the flags above resolve to, as JSON, and exit:
    /// scripts read defaults (the validation split, the seeds) here rather than repeating them.
    #[arg(long)]
    print_config: bool,
}

/// Which architectures `--list-archs` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ArchList {
    All,
    Torchvision,
}

/// Training values; unset ones come from --recipe.
#[derive(Debug, clap::Args)]
struct HyperFlags {
    #[arg(long, help = recipe_help("Number of passes over the training split", |h| h.epochs.to_string()))]
    epochs: Option<usize>,
    #[arg(long, help = recipe_help("Training batch size (validation runs in batches of at least 256)", |h| h.batch_size.to_string()))]
    batch_size: Option<usize>,
    #[arg(long, value_enum, help = recipe_help("Optimizer", |h| name(&h.optimizer)))]
    optimizer: Option<OptimizerKind>,
    #[arg(long, help = recipe_help("Learning rate: of the first epoch (step schedule) or the peak (onecycle, cosine)", |h| h.lr.to_string()))]
    lr: Option<f64>,
    #[arg(long, value_enum, help = recipe_help("Learning-rate schedule", |h| name(&h.schedule)))]
    schedule: Option<Schedule>,
    #[arg(long, help = recipe_help("Factor applied to the learning rate after each epoch (step schedule)", |h| h.lr_decay.to_string()))]
    lr_decay: Option<f64>,
    #[arg(long, help = recipe_help("Share of the steps spent warming up (onecycle, cosine)", |h| h.warmup.to_string()))]
    warmup: Option<f64>,
    #[arg(long, help = format!(
        "Onecycle also cycles Adam's beta1, 0.95 -> 0.85 -> 0.95 against the learning rate, as \
         torch's OneCycleLR does by default [off: beta1 stays {}]",
        trainer::optim::DEFAULT_BETA1
    ))]
    cycle_momentum: bool,
    #[arg(long, help = recipe_help("Weight decay of weights with 2+ dimensions (not biases, BatchNorm)", |h| h.weight_decay.to_string()))]
    weight_decay: Option<f64>,
    #[arg(long, help = recipe_help("Label smoothing of the training loss", |h| h.label_smoothing.to_string()))]
    label_smoothing: Option<f64>,
    #[arg(long, help = recipe_help("Decay of the EMA of the weights, 0 for none", |h| h.ema_decay.to_string()))]
    ema_decay: Option<f64>,
    /// Random affine augmentation of training batches [strong].
    #[arg(long, overrides_with = "no_augment")]
    augment: bool,
    /// No augmentation [seed].
    #[arg(long)]
    no_augment: bool,
    #[arg(long, help = recipe_help("Largest rotation in degrees", |h| h.rotation.to_string()))]
    rotation: Option<f64>,
    #[arg(long, help = recipe_help("Largest shift in pixels per axis", |h| h.translate.to_string()))]
    translate: Option<f64>,
    #[arg(long, help = recipe_help("Largest relative zoom: scale in [1-s, 1+s]", |h| h.scale.to_string()))]
    scale: Option<f64>,
    #[arg(long, help = recipe_help(
        "Elastic distortion on top of the affine one: strength α in pixels, 0 for none (Simard et al. 2003 used 34 with σ 4)",
        |h| h.elastic.to_string()
    ))]
    elastic: Option<f64>,
    #[arg(long, help = recipe_help("Gaussian σ in pixels smoothing the elastic displacement field", |h| h.elastic_sigma.to_string()))]
    elastic_sigma: Option<f64>,
    #[arg(long, help = recipe_help("Share of each class held out for validation", |h| h.val_fraction.to_string()))]
    val_fraction: Option<f64>,
    #[arg(long, help = recipe_help("Seed of the train/validation split; the same for every model of an ensemble", |h| h.split_seed.to_string()))]
    split_seed: Option<u64>,
    #[arg(long, help = recipe_help("Seed of the shuffling, the augmentation and the weight initialisation", |h| h.seed.to_string()))]
    seed: Option<u64>,
    #[arg(long, help = recipe_help("Model input channels: 1 (gray), or 3 to repeat gray to RGB as the seed project did", |h| h.in_channels.to_string()))]
    in_channels: Option<usize>,
    /// bf16 autocast (forward pass and loss) on CUDA, or on the CPU where it is mostly slower.
    #[arg(long)]
    amp: bool,
    #[arg(long, value_enum, help = recipe_help(
        "Which epoch best/ keeps: `best` validation accuracy (chosen on the split that reports it) or `last` (a fixed-length recipe: nothing chosen on the validation split)",
        |h| name(&h.keep)
    ))]
    keep: Option<Keep>,
}

/// `what` and its default under each recipe, read from [`Hyper::new`]: `[seed: A, strong: B]`,
/// or `[A]` when the recipes agree.
fn recipe_help(what: &str, get: impl Fn(&Hyper) -> String) -> String {
    let (seed, strong) = (get(&Hyper::new(Recipe::Seed)), get(&Hyper::new(Recipe::Strong)));
    if seed == strong {
        format!("{what} [{seed}].")
    } else {
        format!("{what} [seed: {seed}, strong: {strong}].")
    }
}

/// A value's name on the command line.
fn name(v: &impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// `trainer --help`, its numbers read from the recipes.
fn long_about() -> String {
    let (s, t) = (Hyper::new(Recipe::Seed), Hyper::new(Recipe::Strong));
    format!(
        "Train digit classifiers (Kaggle \"Digit Recognizer\") with libtorch.\n\n\
        `--recipe seed` (default) is the seed project's: {} lr {}, lr x{} per epoch, batch {}, no \
        augmentation. `--recipe strong`: random affine augmentation on the device, {} (weight decay \
        {}) with a one-cycle schedule per batch (peak lr {}), label smoothing {}, an EMA of the \
        weights (decay {}) that is evaluated and checkpointed. Every value can be changed by its \
        flag. Checkpoints go to <output-dir>/<model>/best (best validation accuracy) and .../last \
        (after every epoch, what --resume continues from).\n\n\
        Tracking: the MLflow store of --tracking-uri, else the file store --mlruns, else \
        {TRACKING_URI_ENV} (a file store path or a server http://host:port), else ./mlruns.",
        name(&s.optimizer),
        s.lr,
        s.lr_decay,
        s.batch_size,
        name(&t.optimizer),
        t.weight_decay,
        t.lr,
        t.label_smoothing,
        t.ema_decay
    )
}

impl HyperFlags {
    fn resolve(&self, recipe: Recipe) -> Hyper {
        let mut h = Hyper::new(recipe);
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { h.$f = v; } )* };
        }
        set!(epochs, batch_size, optimizer, lr, schedule, lr_decay, warmup, weight_decay, label_smoothing);
        set!(
            ema_decay,
            rotation,
            translate,
            scale,
            elastic,
            elastic_sigma,
            val_fraction,
            split_seed,
            seed,
            in_channels,
            keep
        );
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(which) = cli.list_archs {
        for arch in Arch::ALL.iter().filter(|a| which == ArchList::All || a.in_torchvision()) {
            println!("{arch}");
        }
        return ExitCode::SUCCESS;
    }
    if cli.print_config {
        let hyper = cli.hyper.resolve(cli.recipe);
        println!("{}", serde_json::to_string_pretty(&hyper).expect("plain data serialises"));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = trainer::train::install_interrupt_handler() {
        eprintln!("warning: {e}");
    }
    match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            cli::print_error(None, &e);
            if trainer::train::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// --tracking-uri, else --mlruns, else MLFLOW_TRACKING_URI (clap reads it), else ./mlruns.
fn tracking_uri(cli: &Cli, matches: &ArgMatches) -> anyhow::Result<String> {
    let given = cli::tracking_uri(matches)?;
    Ok(match (given, &cli.mlruns) {
        (Some(t), _) if !t.from_env => t.uri,
        (_, Some(p)) => p.display().to_string(),
        (Some(t), None) => t.uri,
        (None, None) => "mlruns".into(),
    })
}

fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let mut uri = tracking_uri(&cli, matches)?;
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
        memory_format: cli.memory_format,
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
            let message = e.to_string();
            cli::print_error(None, &anyhow::Error::new(e).context(format!("training {arch} failed")));
            message
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
    let best = &report.best;
    if best.validated() {
        println!(
            "best: epoch {} val_accuracy {:.6} val_loss {:.6} -> {}",
            best.epoch,
            best.val_accuracy,
            best.val_loss,
            report.best_dir.display()
        );
    } else {
        println!("best: epoch {} (the last; no validation split) -> {}", best.epoch, report.best_dir.display());
    }
    println!("last: {}", report.last_dir.display());
    println!("MLflow run id: {}", report.run_id);
    if !uri.starts_with("http") {
        println!("view it: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {}", report.tracking_uri);
    }
}

/// Markdown table: arch, best validation accuracy, epochs, wall time, training img/s.
fn summary_table(rows: &[(Arch, Result<TrainReport, String>, f64)]) -> String {
    let mut s = String::from(
        "| arch | best val accuracy | epochs | time (s) | img/s | status |\n|---|---:|---:|---:|---:|---|\n",
    );
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
