//! `infer`: predicts digits with one exported ONNX model or an ensemble and writes a
//! Kaggle submission.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser, ValueEnum};
use data::{Dataset, Split};
use inference::{BackendKind, BatchStats, Model, Timings, WallTime};

mod serve_cmd;

/// How an ensemble combines its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Vote {
    /// Each member votes its top label; ties go to the highest summed probability, then
    /// the lowest label.
    Majority,
    /// The label with the highest mean softmax probability.
    Soft,
}

/// Predict Kaggle Digit Recognizer labels with exported ONNX models.
///
/// Examples:
///   infer --model exported/resnet18.onnx digit-recognizer.zip -o submission.csv
///   infer --ensemble resnet18,resnet34,m5 --vote soft test.csv
///   infer --model m.onnx train.csv --evaluate
///   infer serve --ensemble resnet18,resnet34   (HTTP server; see infer serve --help)
///
/// Models must follow the pipeline's ONNX contract: input `input` [N,1,28,28] holding
/// pixel/255, output `logits` [N,10]. On any error nothing is written and the exit
/// status is non-zero.
#[derive(Debug, Parser)]
#[command(name = "infer", version, verbatim_doc_comment)]
#[command(group(ArgGroup::new("what").required(true).args(["model", "ensemble"])))]
struct Cli {
    /// Data to predict: test.csv, a Kaggle zip (its test.csv; train.csv with
    /// --evaluate), a folder holding them, or a labelled train.csv-shaped file.
    input: PathBuf,

    /// One model: an ONNX file, or a registry URI models:/NAME/<version> or
    /// models:/NAME@<alias> (needs MLFLOW_TRACKING_URI; downloads are cached, see --cache-dir).
    #[arg(long, value_name = "MODEL.onnx|URI")]
    model: Option<PathBuf>,

    /// Comma-separated ensemble members: models:/ URIs, paths (containing '/' or ending in
    /// .onnx), or names. With a tracking server in MLFLOW_TRACKING_URI a name is first looked
    /// up in its model registry (alias `champion`, else the newest version); otherwise, or
    /// if not registered, as NAME.onnx or NAME/model.onnx in --models-dir. Members run
    /// concurrently, one thread each.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    ensemble: Option<Vec<String>>,

    /// Folder where member names are looked up. Default: ./models, then ./exported.
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,

    /// Where models downloaded from a tracking server's registry are cached (one folder per
    /// server, name and version). Default: $XDG_CACHE_HOME/digit-recognizer/models, else
    /// ~/.cache/digit-recognizer/models.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Test-time augmentation: every image is also predicted shifted by one pixel right,
    /// left, down and up, and each model's softmax probabilities are averaged over the five
    /// views (5x the compute per image).
    #[arg(long)]
    tta: bool,

    /// Also write per-class probabilities as CSV (ImageId,p0,...,p9): the model's (with
    /// --tta, averaged over the views), or for an ensemble the mean over its members.
    #[arg(long, value_name = "FILE")]
    probabilities: Option<PathBuf>,

    /// How ensemble members are combined.
    #[arg(long, value_enum, default_value_t = Vote::Majority)]
    vote: Vote,

    /// Submission file to write (ImageId,Label). Default: submission.csv, or none with
    /// --evaluate.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Inference backend. Default: ort when libonnxruntime is found (ORT_DYLIB_PATH or
    /// the project's .venv), else tract.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,

    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch_size: u64,

    /// Threads in total (default: all cores); an ensemble splits them between members
    /// (at least one each).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    threads: Option<u64>,

    /// Also write the timing statistics as JSON to this file.
    #[arg(long, value_name = "FILE")]
    timings: Option<PathBuf>,

    /// Score the predictions against the labels (the input must be labelled): prints
    /// accuracy, per-class accuracy and the confusion matrix.
    #[arg(long)]
    evaluate: bool,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A short name for the timing table: the member name, or the file stem (the parent
/// folder's name for `NAME/model.onnx`).
fn display_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if stem == "model" {
        if let Some(parent) = path.parent().and_then(Path::file_name) {
            return parent.to_string_lossy().into_owned();
        }
    }
    stem
}

/// [`inference::resolve_model`], saying on stderr where a registry model came from.
fn resolve_verbose(spec: &str, opts: &inference::ResolveOptions) -> Result<PathBuf> {
    let m = inference::resolve_model(spec, opts)?;
    if let Some(r) = &m.registry {
        eprintln!(
            "infer: {spec} -> models:/{}/{} (run {}), {} {}",
            r.version.name,
            r.version.version,
            r.version.run_id.as_deref().unwrap_or("-"),
            if r.downloaded { "downloaded to" } else { "using" },
            r.path.display()
        );
    }
    Ok(m.path)
}

fn load_input(cli: &Cli) -> Result<Dataset> {
    // From a zip or folder, --evaluate reads the labelled train.csv; a CSV file is read
    // as it is (its header says whether it is labelled).
    let split = if cli.evaluate { Split::Train } else { Split::Test };
    let data = data::load(&cli.input, split).with_context(|| format!("reading {}", cli.input.display()))?;
    if data.is_empty() {
        bail!("{}: no images to predict", data.source);
    }
    if cli.evaluate && data.labels.is_none() {
        bail!(
            "{}: --evaluate needs labelled data (a train.csv-shaped file with a label column)",
            data.source
        );
    }
    Ok(data)
}

fn run(cli: Cli) -> Result<()> {
    let start = Instant::now();
    let mut wall = WallTime::default();

    // Resolve members before the (slow) parse so a typo fails at once.
    let mut resolve = inference::ResolveOptions::new(cli.models_dir.as_deref());
    if let Some(dir) = &cli.cache_dir {
        resolve.cache_dir = dir.clone();
    }
    let (names, paths): (Vec<String>, Vec<PathBuf>) = match (&cli.model, &cli.ensemble) {
        (Some(p), _) => {
            let spec = p.to_string_lossy();
            if inference::is_model_uri(&spec) {
                let m = resolve_verbose(&spec, &resolve)?;
                (vec![spec.trim_start_matches("models:/").to_string()], vec![m])
            } else {
                (vec![display_name(p)], vec![p.clone()])
            }
        }
        (None, Some(members)) => {
            let members: Vec<&String> = members.iter().filter(|m| !m.trim().is_empty()).collect();
            if members.is_empty() {
                bail!("--ensemble needs at least one member name");
            }
            let mut names = Vec::new();
            let mut paths = Vec::new();
            for m in members {
                let m = m.trim();
                paths.push(resolve_verbose(m, &resolve)?);
                names.push(m.trim_start_matches("models:/").to_string());
            }
            (names, paths)
        }
        (None, None) => bail!("give --model or --ensemble"),
    };

    let t = Instant::now();
    let data = load_input(&cli)?;
    wall.parse_ms = ms_since(t);
    eprintln!("infer: {} images from {}", data.len(), data.source);

    let choice = inference::choose_backend(cli.backend);
    eprintln!("infer: backend {} ({})", choice.kind, choice.reason);
    let total_threads = cli.threads.map_or_else(inference::default_threads, |t| t as usize);
    let per_model_threads = (total_threads / paths.len()).max(1);

    let t = Instant::now();
    let models = paths
        .iter()
        .map(|p| Model::load(p, choice.kind, per_model_threads))
        .collect::<Result<Vec<_>, _>>()?;
    wall.load_ms = ms_since(t);

    let batch_size = cli.batch_size as usize;
    let popts = inference::PredictOptions { batch_size, tta: cli.tta };
    if cli.tta {
        eprintln!("infer: --tta: {} views per image (shifts {:?})", inference::TTA_SHIFTS.len(), inference::TTA_SHIFTS);
    }
    let n = data.len();
    let classes = models[0].num_classes();
    let t = Instant::now();
    // Each member's logits (with --tta, log mean probabilities), kept for --probabilities.
    let member_logits: Vec<Vec<f32>>;
    let (labels, model_stats, ensemble_stats) = if models.len() == 1 && cli.ensemble.is_none() {
        let p = inference::predict_with(&models[0], &data, &popts)?;
        let stats = BatchStats::from_batches(&names[0], choice.kind.name(), &p.batch_ms, n);
        let labels = p.labels();
        member_logits = vec![p.logits];
        (labels, vec![stats], None)
    } else {
        let e = inference::predict_ensemble_with(&models, &data, &popts)?;
        let logits: Vec<Vec<f32>> = e.members.iter().map(|m| m.logits.clone()).collect();
        let labels = match cli.vote {
            Vote::Majority => inference::majority_vote(&logits, n, classes),
            Vote::Soft => inference::soft_vote(&logits, n, classes),
        };
        let member_labels: Vec<Vec<u8>> = e.members.iter().map(|m| m.labels()).collect();
        let d = inference::disagreements(&member_labels, inference::DISAGREEMENT_EXAMPLES);
        println!("members disagree on {} of {} images", d.count, d.total);
        if !d.examples.is_empty() {
            println!("first disagreements (ImageId: {}):", names.join(", "));
            for ex in &d.examples {
                let votes: Vec<String> = ex.votes.iter().map(u8::to_string).collect();
                println!("  {:>6}: {}", ex.image_id, votes.join(", "));
            }
        }
        let stats = e
            .members
            .iter()
            .zip(&names)
            .map(|(m, name)| BatchStats::from_batches(name, choice.kind.name(), &m.batch_ms, n))
            .collect();
        // Per-batch spans overlap (pipelined members): total and img/s come from the wall clock.
        let ens = BatchStats::from_batches("ensemble", choice.kind.name(), &e.batch_ms, n).with_wall(e.wall_ms);
        member_logits = logits;
        (labels, stats, Some(ens))
    };
    wall.inference_ms = ms_since(t);

    if cli.evaluate {
        // load_input checked the labels are there.
        if let Some(truth) = &data.labels {
            print!("{}", inference::evaluate(&labels, truth, classes));
        }
    }

    let output = match (&cli.output, cli.evaluate) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(PathBuf::from("submission.csv")),
        (None, true) => None,
    };
    let t = Instant::now();
    if let Some(out) = &output {
        data::write_submission(out, &labels).with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(p) = &cli.probabilities {
        let probs = inference::mean_probabilities(&member_logits, n, classes);
        if let Err(e) = data::atomic_write(p, inference::probabilities_csv(&probs, classes).as_bytes()) {
            // All or nothing: no submission without the probabilities asked for.
            if let Some(out) = &output {
                let _ = std::fs::remove_file(out);
            }
            return Err(e).with_context(|| format!("writing {}", p.display()));
        }
    }
    wall.write_ms = ms_since(t);
    wall.total_ms = ms_since(start);

    let timings = Timings {
        batch_size,
        threads: total_threads,
        concurrency: inference::Concurrency::of(&model_stats, ensemble_stats.as_ref()),
        views: if cli.tta { inference::TTA_SHIFTS.len() } else { 1 },
        models: model_stats,
        ensemble: ensemble_stats,
        wall,
    };
    print!("{}", timings.table());
    if let Some(p) = &cli.timings {
        if let Err(e) = data::atomic_write(p, timings.to_json().as_bytes()) {
            // A failed run leaves no submission behind, even when only the timings failed.
            if let Some(out) = &output {
                let _ = std::fs::remove_file(out);
            }
            return Err(e).with_context(|| format!("writing {}", p.display()));
        }
    }
    if let Some(out) = &output {
        println!("wrote {} ({} predictions)", out.display(), labels.len());
    }
    Ok(())
}

fn main() -> ExitCode {
    // `infer serve ...` is the HTTP server, with its own options (`infer serve --help`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "serve") {
        return serve_cmd::main(args[1..].to_vec());
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infer: error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// An error on one line: some backends' messages (ONNX Runtime's) end in or hold newlines.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
