//! `exporter`: a trained checkpoint directory -> an ONNX model, also logged to the checkpoint's
//! MLflow run as an MLflow model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use exporter::check::{CheckData, CheckOptions, CHECK_IMAGES, CHECK_MAX_REL_DIFF, DEFAULT_CHECK_DATA};
use exporter::{export_checkpoint_checked, ExportOptions, Fault, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET};
use inference::cli::TRACKING_URI_ENV;
use tracking::Tracker;

/// Where the trainer logs the best checkpoint in its run's artifacts.
const CHECKPOINT_ARTIFACT_DIR: &str = "checkpoint";

/// `exporter --help`, its numbers taken from the self-check's constants.
fn long_about() -> String {
    format!(
        "Export a trained checkpoint (model.safetensors + config.json) to ONNX.\n\n\
        The model takes `input`: float32 [N,1,28,28] gray images holding pixel/255 (the \
        checkpoint's normalisation and channel repetition are built into the graph) and returns \
        `logits`: float32 [N,num_classes].\n\n\
        The checkpoint is a directory (--checkpoint) or the `checkpoint/` artifacts of an MLflow \
        run (--run, on a file store or a tracking server). When config.json names an MLflow run, \
        or with --run, the model is also logged to that run as the MLflow model `model/` (onnx + \
        python_function flavors; through the server's artifact proxy for http(s) stores), \
        loadable with mlflow.pyfunc.load_model(\"runs:/<run_id>/model\"). --register NAME then \
        makes it a new version of a registered model, --alias points an alias at it, and \
        `infer --model models:/NAME@alias` serves it.\n\n\
        Before anything is written, the encoded model is self-checked: it runs in tract and, when \
        its library loads, ONNX Runtime on {CHECK_IMAGES} validation images, and the logits must \
        match a plain f64 evaluation of the checkpoint (unfolded weights) within {CHECK_MAX_REL_DIFF:e} \
        relative to the largest logit (float32 rounding grows with the logits). On a mismatch the \
        differences are printed, the exit status is non-zero and neither the ONNX file nor the \
        MLflow model is written."
    )
}

#[derive(Debug, Parser)]
#[command(
    name = "exporter",
    version,
    about = "Export a trained checkpoint to ONNX",
    long_about = long_about()
)]
struct Cli {
    /// Checkpoint directory holding model.safetensors and config.json.
    #[arg(long, value_name = "DIR", required_unless_present = "run", conflicts_with = "run")]
    checkpoint: Option<PathBuf>,

    /// Export the best checkpoint of this MLflow run (its `checkpoint/` artifacts, as the
    /// trainer logs them), from the store given by --tracking-uri, else MLFLOW_TRACKING_URI,
    /// else ./mlruns; the model is logged back into the same run.
    #[arg(long, value_name = "RUN_ID")]
    run: Option<String>,

    /// ONNX file to write (atomically: nothing is left behind on error).
    /// Default: exported/<architecture>.onnx.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// ONNX opset of the default domain.
    #[arg(long, default_value_t = DEFAULT_OPSET, value_parser = clap::value_parser!(i64).range(MIN_OPSET..=MAX_OPSET))]
    opset: i64,

    /// Keep BatchNormalization nodes instead of folding them into the preceding Conv/Gemm.
    #[arg(long)]
    no_fold_bn: bool,

    /// Fixed batch size instead of a dynamic batch dimension `N`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,

    /// Do not log the model to the run's MLflow artifacts.
    #[arg(long, conflicts_with = "register")]
    no_mlflow: bool,

    /// MLflow tracking store: a file store path / file: URI, or a tracking server
    /// http(s)://host:port. With --checkpoint the flag overrides the store recorded in
    /// config.json (e.g. when the store moved; the environment variable does not); with --run
    /// it defaults to the environment variable, else ./mlruns.
    #[arg(long, value_name = "URI", env = TRACKING_URI_ENV)]
    tracking_uri: Option<String>,

    /// Register the logged model as a new version of this registered model (created if
    /// missing), in the tracking server's registry or the file store's.
    #[arg(long, value_name = "NAME")]
    register: Option<String>,

    /// Point this alias (e.g. champion) at the new version.
    #[arg(long, value_name = "ALIAS", requires = "register")]
    alias: Option<String>,

    /// Skip the self-check (running the model in tract / ONNX Runtime against the reference).
    #[arg(long)]
    no_check: bool,

    #[arg(long, value_name = "PATH", conflicts_with = "no_check", help = format!(
        "Images for the self-check: a data folder, Kaggle zip or CSV; the first images of its \
         validation split are used. Default: {DEFAULT_CHECK_DATA} under the current folder or \
         the repository holding the executable, else synthetic images."
    ))]
    check_data: Option<PathBuf>,

    /// Test hook: corrupt one folded bias so the self-check must fail.
    #[arg(long, hide = true)]
    debug_corrupt_folded_bias: bool,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(&cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            inference::cli::print_error(None, &e);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, matches: &ArgMatches) -> Result<()> {
    // --tracking-uri, else MLFLOW_TRACKING_URI (clap reads both; `from_env` says which).
    let tracking = inference::cli::tracking_uri(matches)?;
    let opts = ExportOptions {
        opset: cli.opset,
        fold_bn: !cli.no_fold_bn,
        dynamic_batch: cli.batch_size.is_none(),
        batch_size: cli.batch_size.unwrap_or(1) as usize,
        fault: cli.debug_corrupt_folded_bias.then_some(Fault::PerturbFoldedBias),
    };
    if let Some(name) = &cli.register {
        tracking::validate_model_name(name)?;
    }
    if let Some(alias) = &cli.alias {
        tracking::validate_alias(alias)?;
    }
    // Kept alive until the export is done: a checkpoint downloaded from a tracking server.
    let mut _download = None;
    let (ckpt_dir, run_target) = match (&cli.checkpoint, &cli.run) {
        (Some(dir), _) => (dir.clone(), None),
        (None, Some(run_id)) => {
            let uri =
                tracking.as_ref().map_or_else(|| tracking::FileStore::DEFAULT_ROOT.to_string(), |t| t.uri.clone());
            let (dir, tmp) = fetch_run_checkpoint(&uri, run_id)?;
            _download = tmp;
            (dir, Some((uri, run_id.clone())))
        }
        (None, None) => bail!("give --checkpoint DIR or --run RUN_ID"),
    };
    let output = match &cli.output {
        Some(p) => p.clone(),
        None => {
            let meta = models::CheckpointMeta::load(&ckpt_dir.join(models::CHECKPOINT_META_FILE))
                .with_context(|| format!("reading checkpoint {}", ckpt_dir.display()))?;
            PathBuf::from("exported").join(format!("{}.onnx", meta.model.arch.name()))
        }
    };
    let check = (!cli.no_check).then(|| CheckOptions {
        data: cli.check_data.clone().map_or(CheckData::Default, CheckData::Path),
        ..Default::default()
    });
    if check.is_some() {
        println!("self-check: running the exported model in tract and (if its library loads) ONNX Runtime on {CHECK_IMAGES} images ...");
    }
    let report = export_checkpoint_checked(&ckpt_dir, &output, &opts, check.as_ref())
        .with_context(|| format!("exporting checkpoint {}", ckpt_dir.display()))?;
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
    // Where to log: the run asked for, else the one the checkpoint was trained in.
    let (uri, run_id) = match run_target {
        Some(t) => t,
        None => {
            let Some(run_id) = report.meta.run_id.clone() else {
                if cli.register.is_some() {
                    bail!(
                        "--register needs an MLflow run to log the model into, but {} names none (pass --run RUN_ID)",
                        ckpt_dir.display()
                    );
                }
                return Ok(()); // a checkpoint trained without MLflow
            };
            // Only the flag overrides the store the checkpoint was trained with.
            let flag = tracking.as_ref().filter(|t| !t.from_env).map(|t| t.uri.clone());
            let Some(uri) = flag.or(report.meta.tracking_uri.clone()) else {
                if cli.register.is_some() {
                    bail!("config.json names run {run_id} but no tracking_uri; pass --tracking-uri to --register");
                }
                eprintln!("note: config.json names run {run_id} but no tracking_uri; not logging to MLflow (pass --tracking-uri)");
                return Ok(());
            };
            (uri, run_id)
        }
    };
    // Logging failures are errors: the user asked for a tracked model. The ONNX file stays, it is complete.
    let logged =
        open_store(&uri).and_then(|t| log_to_mlflow(t.as_ref(), &run_id, &report, &opts)).with_context(|| {
            format!(
                "{} was written, but logging it to MLflow run {run_id} in {uri} failed (pass --no-mlflow to skip)",
                report.path.display()
            )
        })?;
    println!("logged MLflow model runs:/{run_id}/model to {logged}");

    if let Some(name) = &cli.register {
        let registry = tracking::open_registry(&uri)?;
        let created = registry
            .create_registered_model(name)
            .with_context(|| format!("creating registered model {name:?} in {uri}"))?;
        let version = registry
            .create_model_version(name, &logged, Some(&run_id))
            .with_context(|| format!("registering {logged} as a version of {name:?} in {uri}"))?;
        println!(
            "registered models:/{name}/{} ({})",
            version.version,
            if created { "new registered model" } else { "new version" }
        );
        if let Some(alias) = &cli.alias {
            registry
                .set_alias(name, alias, version.version)
                .with_context(|| format!("setting alias {alias:?} of {name:?} to version {}", version.version))?;
            println!("alias models:/{name}@{alias} -> version {}", version.version);
        }
    }
    Ok(())
}

/// The tracking backend behind `uri`, without buffering (a failed upload must be an error).
/// A local store must already exist: creating an empty one would hide a wrong path.
fn open_store(uri: &str) -> Result<Arc<dyn Tracker>> {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(Arc::new(tracking::RestStore::new(uri)?));
    }
    let Some(store) = local_store_path(uri) else {
        bail!("tracking URI {uri} is neither a local MLflow file store nor an http(s) tracking server");
    };
    if !store.is_dir() {
        bail!("tracking store {} does not exist", store.display());
    }
    Ok(tracking::open_tracker(&store.display().to_string())?)
}

/// The checkpoint a run logged under `checkpoint/`: its folder in a file store, or a temporary
/// download from a tracking server (returned so that it lives until the export is done).
fn fetch_run_checkpoint(uri: &str, run_id: &str) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let files = [models::CHECKPOINT_META_FILE, models::CHECKPOINT_WEIGHTS_FILE];
    let tracker = open_store(uri)?;
    let run = tracker.open_run(run_id).with_context(|| format!("looking up run {run_id} in {uri}"))?;
    if uri.starts_with("http://") || uri.starts_with("https://") {
        let rest = tracking::RestStore::new(uri)?;
        let tmp = tempfile::tempdir().context("creating a folder for the downloaded checkpoint")?;
        for f in files {
            let path = format!("{CHECKPOINT_ARTIFACT_DIR}/{f}");
            let bytes = rest.download_artifact(run_id, &path).with_context(|| {
                format!("downloading {path} of run {run_id} from {uri} (the trainer logs the best checkpoint there)")
            })?;
            std::fs::write(tmp.path().join(f), bytes)
                .with_context(|| format!("writing {}", tmp.path().join(f).display()))?;
        }
        println!("fetched the checkpoint of run {run_id} from {uri}");
        return Ok((tmp.path().to_path_buf(), Some(tmp)));
    }
    let dir = run.artifact_dir().join(CHECKPOINT_ARTIFACT_DIR);
    if let Some(f) = files.iter().find(|f| !dir.join(f).is_file()) {
        bail!("run {run_id} has no {CHECKPOINT_ARTIFACT_DIR}/{f} artifact ({} is missing; the trainer logs the best checkpoint there)", dir.join(f).display());
    }
    Ok((dir, None))
}

/// Uploads the MLflow model; returns its artifact URI (`<run artifact uri>/model`).
fn log_to_mlflow(
    tracker: &dyn Tracker,
    run_id: &str,
    report: &exporter::ExportReport,
    opts: &ExportOptions,
) -> Result<String> {
    let run = tracker.open_run(run_id)?;
    let onnx = std::fs::read(&report.path).with_context(|| format!("reading back {}", report.path.display()))?;
    exporter::mlflow::log_model(&run, &onnx, &report.meta, opts)?;
    let root = run.info()?.artifact_uri;
    Ok(format!("{}/{}", root.trim_end_matches('/'), exporter::mlflow::MODEL_ARTIFACT_DIR))
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
