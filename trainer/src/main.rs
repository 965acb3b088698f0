//! `trainer`: trains one zoo architecture on the Digit Recognizer data, keeps the best
//! checkpoint by validation accuracy and records the run in MLflow.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use models::Arch;
use trainer::{DeviceChoice, TrainOptions};

/// Train a digit classifier (Kaggle "Digit Recognizer") with libtorch.
///
/// Recipe of the seed project: Adam, learning rate multiplied by --lr-decay after each epoch,
/// stratified train/validation split, inputs pixel/255, no augmentation, cross-entropy.
/// Checkpoints go to <output-dir>/<model>/best (best validation accuracy) and .../last;
/// params, per-epoch metrics and the best checkpoint are logged to the MLflow file store.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about)]
struct Cli {
    /// Architecture to train.
    #[arg(long, value_enum)]
    model: Arch,
    /// Number of passes over the training split.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Training data: a folder holding train.csv, the Kaggle digit-recognizer.zip, or a train.csv file.
    #[arg(long)]
    data: PathBuf,
    /// Training batch size (validation runs in batches of at least 256).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam learning rate of the first epoch.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Factor applied to the learning rate after each epoch.
    #[arg(long, default_value_t = 0.75)]
    lr_decay: f64,
    /// Share of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Seed of the split, the shuffling and the weight initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Model input channels: 1 (gray), or 3 to repeat gray to RGB as the seed project did.
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
    /// Where to train; `cuda` fails if libtorch sees no GPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// libtorch CPU threads (default: libtorch's choice, one per physical core). On a machine
    /// busy with other work, fewer threads can be much faster (OpenMP barriers stall).
    #[arg(long)]
    threads: Option<usize>,
    /// Checkpoints are written to <output-dir>/<model>/{best,last}/.
    #[arg(long, default_value = "checkpoints")]
    output_dir: PathBuf,
    /// MLflow file store (tracking URI).
    #[arg(long, default_value = "./mlruns")]
    mlruns: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = TrainOptions {
        arch: cli.model,
        epochs: cli.epochs,
        data: cli.data,
        batch_size: cli.batch_size,
        lr: cli.lr,
        lr_decay: cli.lr_decay,
        val_fraction: cli.val_fraction,
        seed: cli.seed,
        in_channels: cli.in_channels,
        device: cli.device,
        threads: cli.threads,
        output_dir: cli.output_dir,
        mlruns: cli.mlruns,
        experiment: cli.experiment,
        limit: cli.limit,
        pretrained: cli.pretrained,
        progress: !cli.no_progress,
    };
    let report = trainer::train(&opts).with_context(|| format!("training {} failed", opts.arch))?;
    println!(
        "best: epoch {} val_accuracy {:.6} val_loss {:.6} -> {}",
        report.best.epoch,
        report.best.val_accuracy,
        report.best.val_loss,
        report.best_dir.display()
    );
    println!("last: {}", report.last_dir.display());
    println!("MLflow run id: {}", report.run_id);
    println!("view it: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {}", opts.mlruns.display());
    Ok(())
}
