//! `exporter`: a trained checkpoint directory -> an ONNX model, also logged to the checkpoint's
//! MLflow run as an MLflow model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use exporter::check::{CheckData, CheckOptions, CHECK_IMAGES};
use exporter::{export_checkpoint_checked, ExportOptions, Fault, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET};

#[derive(Debug, Parser)]
#[command(
    name = "exporter",
    version,
    about = "Export a trained checkpoint to ONNX",
    long_about = "Export a trained checkpoint (model.safetensors + config.json) to ONNX.\n\n\
        The model takes `input`: float32 [N,1,28,28] gray images holding pixel/255 (the \
        checkpoint's normalisation and channel repetition are built into the graph) and returns \
        `logits`: float32 [N,num_classes].\n\n\
        When config.json names an MLflow run (run_id + tracking_uri of a local file store), the \
        model is also logged to that run as the MLflow model `model/` (onnx + python_function \
        flavors), loadable with mlflow.pyfunc.load_model(\"runs:/<run_id>/model\").\n\n\
        Before anything is written, the encoded model is self-checked: it runs in tract and, when \
        its library loads, ONNX Runtime on 16 validation images, and the logits must match a plain \
        f64 evaluation of the checkpoint (unfolded weights) within 1e-4 absolute and 1e-5 \
        relative to the largest logit. On a mismatch the differences are printed, the exit status \
        is non-zero and neither the ONNX file nor the MLflow model is written."
)]
struct Cli {
    /// Checkpoint directory holding model.safetensors and config.json.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,

    /// ONNX file to write (atomically: nothing is left behind on error).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,

    /// ONNX opset of the default domain.
    #[arg(long, default_value_t = DEFAULT_OPSET, value_parser = clap::value_parser!(i64).range(MIN_OPSET..=MAX_OPSET))]
    opset: i64,

    /// Keep BatchNormalization nodes instead of folding them into the preceding Conv/Gemm.
    #[arg(long)]
    no_fold_bn: bool,

    /// Fixed batch size instead of a dynamic batch dimension `N`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,

    /// Do not log the model to the checkpoint's MLflow run.
    #[arg(long)]
    no_mlflow: bool,

    /// MLflow tracking store to log into instead of the one recorded in config.json
    /// (e.g. when the store moved).
    #[arg(long, value_name = "URI")]
    tracking_uri: Option<String>,

    /// Skip the self-check (running the model in tract / ONNX Runtime against the reference).
    #[arg(long)]
    no_check: bool,

    /// Images for the self-check: a data folder, Kaggle zip or CSV; the first images of its
    /// validation split are used. Default: sample/digit-recognizer.zip under the current
    /// folder or the repository holding the executable, else synthetic images.
    #[arg(long, value_name = "PATH", conflicts_with = "no_check")]
    check_data: Option<PathBuf>,

    /// Test hook: corrupt one folded bias so the self-check must fail.
    #[arg(long, hide = true)]
    debug_corrupt_folded_bias: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the previous message
/// already quotes (several libraries put their source in their own message).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: &Cli) -> Result<()> {
    let opts = ExportOptions {
        opset: cli.opset,
        fold_bn: !cli.no_fold_bn,
        dynamic_batch: cli.batch_size.is_none(),
        batch_size: cli.batch_size.unwrap_or(1) as usize,
        fault: cli.debug_corrupt_folded_bias.then_some(Fault::PerturbFoldedBias),
    };
    let check = (!cli.no_check).then(|| CheckOptions {
        data: cli.check_data.clone().map_or(CheckData::Default, CheckData::Path),
        ..Default::default()
    });
    if check.is_some() {
        println!("self-check: running the exported model in tract and (if its library loads) ONNX Runtime on {CHECK_IMAGES} images ...");
    }
    let report = export_checkpoint_checked(&cli.checkpoint, &cli.output, &opts, check.as_ref())
        .with_context(|| format!("exporting checkpoint {}", cli.checkpoint.display()))?;
    if let Some(c) = &report.check {
        let verdict = if c.runtimes.is_empty() { "skipped" } else { "passed" };
        println!("self-check {verdict} in {:.1} s: {c}", c.elapsed.as_secs_f64());
    } else if cli.no_check {
        println!("self-check skipped (--no-check)");
    }
    let m = &report.meta.model;
    println!(
        "wrote {} ({}, {} nodes, {} initializers, {} parameters, opset {}, {} BatchNorm(s) folded, arch {})",
        report.path.display(),
        human_bytes(report.bytes),
        report.nodes,
        report.initializers,
        report.stats.parameters,
        report.opset,
        report.stats.folded_batch_norms,
        m.arch
    );

    if cli.no_mlflow {
        return Ok(());
    }
    let Some(run_id) = report.meta.run_id.as_deref() else {
        return Ok(()); // a checkpoint trained without MLflow
    };
    let Some(uri) = cli.tracking_uri.as_deref().or(report.meta.tracking_uri.as_deref()) else {
        eprintln!("note: config.json names run {run_id} but no tracking_uri; not logging to MLflow (pass --tracking-uri)");
        return Ok(());
    };
    let Some(store) = local_store_path(uri) else {
        eprintln!("note: tracking URI {uri} is not a local MLflow file store; the model was not logged to run {run_id}");
        return Ok(());
    };
    // Logging failures are errors: the user asked for a tracked model. The ONNX file stays, it is complete.
    let logged = log_to_mlflow(&store, run_id, &report, &opts).with_context(|| {
        format!(
            "{} was written, but logging it to MLflow run {run_id} in {} failed (pass --no-mlflow to skip)",
            report.path.display(),
            store.display()
        )
    })?;
    println!("logged MLflow model to run {run_id}: {}", logged.display());
    Ok(())
}

fn log_to_mlflow(store: &Path, run_id: &str, report: &exporter::ExportReport, opts: &ExportOptions) -> Result<PathBuf> {
    // FileStore::new creates missing stores; a store that vanished must be an error instead.
    if !store.is_dir() {
        bail!("tracking store {} does not exist", store.display());
    }
    let tracker = tracking::open_tracker(&store.display().to_string())?;
    let run = tracker.open_run(run_id)?;
    let onnx = std::fs::read(&report.path).with_context(|| format!("reading back {}", report.path.display()))?;
    Ok(exporter::mlflow::log_model(&run, &onnx, &report.meta, opts)?)
}

/// The directory of a `file:` URI or plain path; `None` for other schemes (http, databricks...).
fn local_store_path(uri: &str) -> Option<PathBuf> {
    if let Some(rest) = uri.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        return path.starts_with('/').then(|| PathBuf::from(path));
    }
    if let Some(rest) = uri.strip_prefix("file:") {
        return Some(PathBuf::from(rest));
    }
    match uri.find("://") {
        Some(_) => None,
        None if uri.contains(':') && !uri.starts_with('/') && !uri.starts_with('.') => None, // e.g. `databricks`-style "scheme:x"
        None => Some(PathBuf::from(uri)),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
