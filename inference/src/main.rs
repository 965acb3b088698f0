//! `infer`: predicts digits with one exported ONNX model or an ensemble and writes a
//! Kaggle submission.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use data::{Dataset, Split};
use inference::cli::ModelArgs;
use inference::{BatchStats, Model, PredictOptions, Timings, WallTime};

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
// Without a subcommand `infer` predicts: its arguments are required then, and only then.
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    predict: PredictArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(serve_cmd::ServeArgs),
}

/// `infer` without a subcommand: predict a data set.
#[derive(Debug, clap::Args)]
struct PredictArgs {
    /// Data to predict: test.csv, a Kaggle zip (its test.csv; train.csv with
    /// --evaluate), a folder holding them, or a labelled train.csv-shaped file.
    #[arg(required = true)]
    input: Option<PathBuf>,

    #[command(flatten)]
    models: ModelArgs,

    #[arg(long, help = format!(
        "Test-time augmentation: every image is also predicted shifted by one pixel right, left, \
         down and up, and each model's softmax probabilities are averaged over the {n} views \
         ({n}x the compute per image).",
        n = inference::TTA_SHIFTS.len()
    ))]
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

    /// Images per batch.
    #[arg(long, default_value_t = PredictOptions::default().batch_size as u64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch_size: u64,

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

fn load_input(cli: &PredictArgs) -> Result<Dataset> {
    // From a zip or folder, --evaluate reads the labelled train.csv; a CSV file is read
    // as it is (its header says whether it is labelled).
    let split = if cli.evaluate { Split::Train } else { Split::Test };
    let input = cli.input.as_ref().context("give the data to predict")?;
    let data = data::load(input, split).with_context(|| format!("reading {}", input.display()))?;
    if data.is_empty() {
        bail!("{}: no images to predict", data.source);
    }
    if cli.evaluate && data.labels.is_none() {
        bail!("{}: --evaluate needs labelled data (a train.csv-shaped file with a label column)", data.source);
    }
    Ok(data)
}

fn predict(cli: PredictArgs, matches: &ArgMatches) -> Result<()> {
    let start = Instant::now();
    let mut wall = WallTime::default();

    // Resolve members before the (slow) parse so a typo fails at once.
    let (names, paths): (Vec<String>, Vec<PathBuf>) = cli.models.resolve(matches, "infer")?.into_iter().unzip();

    let t = Instant::now();
    let data = load_input(&cli)?;
    wall.parse_ms = ms_since(t);
    eprintln!("infer: {} images from {}", data.len(), data.source);

    let choice = inference::choose_backend(cli.models.backend);
    eprintln!("infer: backend {} ({})", choice.kind, choice.reason);
    let total_threads = cli.models.total_threads();
    let per_model_threads = (total_threads / paths.len()).max(1);

    let t = Instant::now();
    let models = paths.iter().map(|p| Model::load(p, choice.kind, per_model_threads)).collect::<Result<Vec<_>, _>>()?;
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
    let (labels, model_stats, ensemble_stats) = if models.len() == 1 && cli.models.ensemble.is_none() {
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        // The HTTP server (`infer serve --help`); it prints its own errors.
        Some(Command::Serve(args)) => {
            let sub = matches.subcommand_matches("serve").expect("clap matched serve");
            serve_cmd::main(args, sub)
        }
        None => match predict(cli.predict, &matches) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                inference::cli::print_error(Some("infer"), &e);
                ExitCode::FAILURE
            }
        },
    }
}
