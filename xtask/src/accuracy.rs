//! `xtask accuracy` (`scripts/accuracy.sh`, issues #8, #19): an ensemble of small digit CNNs
//! trained with the strong recipe for a fixed number of epochs (`--keep last`: no epoch is
//! chosen on any validation images), exported, and turned into a submission by
//! `infer --ensemble --tta`; with FULL=0 also scored, alone and voting, on the split they held out.

use std::fs;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::args::OrDefault;
use crate::bins::{self, Bins, Clock};
use crate::members::Members;
use crate::{lanes, split, Usage};

const DEFAULT_MEMBERS: &str = "cnn_digits:1,cnn_digits:2";

/// The recipe's length: epochs over a split's training images (1 - VAL_FRACTION of them).
const RECIPE_EPOCHS: u32 = 40;

/// Epochs over every labelled image that make the same number of optimiser steps as `epochs`
/// over a split's training part (40 -> 32), at least one.
fn full_data_epochs(epochs: u32) -> u32 {
    ((f64::from(epochs) * (1.0 - data::VAL_FRACTION)).round() as u32).max(1)
}

const LONG_ABOUT: &str = "\
The accuracy recipe: members trained side by side with the strong recipe for a fixed number of \
epochs (the last epoch's EMA weights, --keep last), exported, and voted into a submission (the \
majority of the members' shift-TTA predictions, infer --ensemble --tta).

FULL=1 (the default) trains every member on all labelled images (--val-fraction 0): nothing is \
held out, nothing is scored; the submission's mode. FULL=0 holds out the stratified split of \
SPLIT_SEED (20% of each class, the same for every member whatever its seed) and scores each \
member and the ensemble (majority, soft, each with and without shift TTA) on it: the recipe's \
estimate. No choice is made on that split.

Members run in JOBS lanes of THREADS libtorch threads: a small CNN keeps one core busy far better \
than it splits a step over two. Everything lands in OUT (checkpoints/, models/, logs/, split/, \
timings.json) and the submission in SUBMISSION. The pipeline's binaries are taken from the folder \
xtask is in.";

#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT)]
pub struct Args {
    /// Kaggle's digit-recognizer.zip (or its folder)
    pub data: PathBuf,
    /// The recipe's length in epochs over a split's training images [default: 40]. FULL=1 trains
    /// the same number of optimiser steps over every labelled image: 4/5 as many epochs (32)
    #[arg(default_value = "", hide_default_value = true)]
    pub epochs: OrDefault<NonZeroU32>,
    /// Comma list of arch:seed or arch:seed:epochs; a member's own epochs (counted like EPOCHS)
    /// override EPOCHS, e.g. to give a costlier net fewer [default: cnn_digits:1,cnn_digits:2]
    #[arg(default_value = "", hide_default_value = true)]
    pub members: OrDefault<Members>,
    /// 1: train on every labelled image and only write the submission; 0: hold out the split and
    /// score on it
    #[arg(long, env = "FULL", default_value = "1", value_name = "0|1", value_parser = parse_full, action = clap::ArgAction::Set)]
    pub full: bool,
    /// Seed of the held-out split with FULL=0 [default: the trainer's]
    #[arg(long, env = "SPLIT_SEED")]
    pub split_seed: Option<u64>,
    /// Folder for checkpoints, ONNX files, logs, the split and timings
    #[arg(long, env = "OUT", default_value = "runs/accuracy")]
    pub out: PathBuf,
    /// Where the submission is written
    #[arg(long, env = "SUBMISSION", default_value = "submission.csv")]
    pub submission: PathBuf,
    /// Members trained at once [default: one per CPU, at most one per member]
    #[arg(long, env = "JOBS", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// libtorch threads per member [default: CPUs / JOBS]
    #[arg(long, env = "THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Extra trainer flags for every member, split at white space, e.g. '--elastic 36 --elastic-sigma 6'
    #[arg(long, env = "TRAIN_FLAGS", default_value = "", hide_default_value = true, allow_hyphen_values = true)]
    pub train_flags: String,
    /// Unix time the calling script started, so that "in all" counts its set-up and build
    #[arg(long, env = "XTASK_STARTED", hide = true)]
    pub started: Option<u64>,
}

fn parse_full(s: &str) -> Result<bool, String> {
    match s {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(format!("FULL must be 0 or 1, got '{s}'")),
    }
}

/// One member as it will run.
#[derive(Debug, PartialEq)]
struct Planned {
    arch: models::Arch,
    seed: u64,
    epochs: u32,
    name: String,
}

/// What the arguments resolve to on a machine of `cpus` CPUs.
#[derive(Debug)]
struct Plan {
    members: Vec<Planned>,
    jobs: usize,
    threads: usize,
    /// How every member treats the split: fixed length in both modes (the exported checkpoint
    /// is the last epoch's), all data or the asked-for split.
    split_flags: Vec<String>,
    train_flags: Vec<String>,
}

fn plan(args: &Args, cpus: usize) -> Result<Plan, Usage> {
    let mut split_flags = vec!["--keep".to_string(), "last".to_string()];
    match (args.full, args.split_seed) {
        (true, Some(_)) => return Err(Usage("SPLIT_SEED needs FULL=0 (FULL=1 holds nothing out)".into())),
        (true, None) => split_flags.extend(["--val-fraction".into(), "0".into()]),
        (false, Some(seed)) => split_flags.extend(["--split-seed".into(), seed.to_string()]),
        (false, None) => {}
    }
    let epochs = args.epochs.0.map_or(RECIPE_EPOCHS, NonZeroU32::get);
    let length = |e: u32| if args.full { full_data_epochs(e) } else { e };
    let members = match &args.members.0 {
        Some(members) => members.clone(),
        None => DEFAULT_MEMBERS.parse::<Members>().expect("the default members parse"),
    };
    let members: Vec<Planned> = members
        .0
        .iter()
        .map(|m| Planned { arch: m.arch, seed: m.seed, epochs: length(m.epochs.unwrap_or(epochs)), name: m.name() })
        .collect();
    let jobs = args.jobs.map_or(cpus.min(members.len()), |j| j as usize).max(1);
    let threads = args.threads.map_or((cpus / jobs).max(1), |t| t as usize);
    let train_flags = args.train_flags.split_whitespace().map(String::from).collect();
    Ok(Plan { members, jobs, threads, split_flags, train_flags })
}

pub fn run(args: Args) -> Result<()> {
    let t0 = args.started.unwrap_or_else(bins::unix_now);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = plan(&args, cpus)?;
    let bins = Bins::beside_me()?;
    for dir in [args.out.join("models"), args.out.join("logs")] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let clock = Clock::start();
    train(&args, &plan, &bins, &clock)?;
    println!("== all members trained and exported after {} s", clock.secs());
    let ensemble = plan.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(",");
    if !args.full {
        score(&args, &plan, &bins, &ensemble)?;
    }
    submit(&args, &bins, &ensemble)?;
    let rows = lines(&args.submission)?.saturating_sub(1);
    println!(
        "== wrote {} ({rows} rows) in {} s after the build, {} s in all (set-up and build included)",
        args.submission.display(),
        clock.secs(),
        bins::secs_since_unix(t0)
    );
    Ok(())
}

/// Every member trained, then its kept checkpoint exported, in lanes. The trainers' MLflow
/// store makes one "accuracy" experiment however many start at once.
fn train(args: &Args, plan: &Plan, bins: &Bins, clock: &Clock) -> Result<()> {
    let (out, logs) = (&args.out, args.out.join("logs"));
    let trained = lanes::run(plan.jobs, plan.members.len(), |i, lane| {
        let m = &plan.members[i];
        let log = logs.join(format!("{}.log", m.name));
        println!(
            "== lane {lane}: train {} ({} epochs, strong recipe, {} thread(s); log {})",
            m.name,
            m.epochs,
            plan.threads,
            log.display()
        );
        let checkpoints = out.join("checkpoints").join(&m.name);
        let mut trainer = bins.cmd("trainer");
        trainer
            .args(["--model", m.arch.name(), "--recipe", "strong"])
            .args(["--epochs", &m.epochs.to_string(), "--seed", &m.seed.to_string()])
            .args(&plan.split_flags)
            .arg("--data")
            .arg(&args.data)
            .args(["--threads", &plan.threads.to_string()])
            .arg("--output-dir")
            .arg(&checkpoints)
            .args(["--experiment", "accuracy", "--no-progress"])
            .args(&plan.train_flags);
        // The checkpoint it kept: the last epoch's EMA weights.
        let mut exporter = bins.cmd("exporter");
        exporter.arg("--checkpoint").arg(checkpoints.join(m.arch.name()).join("best"));
        exporter.arg("-o").arg(onnx_of(out, &m.name));
        lanes::logged(&m.name, &log, &mut [trainer, exporter])?;
        let best = bins::best_of(&fs::read_to_string(&log).unwrap_or_default());
        println!("== lane {lane}: {} done after {} s: {best}", m.name, clock.secs());
        Ok(())
    });
    trained.with_context(|| format!("a member failed to train or export (logs in {})", logs.display()))
}

/// FULL=0: each member and the ways of combining them, scored on the split they held out.
fn score(args: &Args, plan: &Plan, bins: &Bins, ensemble: &str) -> Result<()> {
    let out = &args.out;
    println!("== validation split (the one every member held out; last epochs, nothing chosen on it)");
    let configs: Vec<PathBuf> = plan
        .members
        .iter()
        .map(|m| out.join("checkpoints").join(&m.name).join(m.arch.name()).join("best/train_config.json"))
        .collect();
    let (fraction, seed) = split::held_out(&configs)?;
    let val = split::write(&args.data, &out.join("split"), fraction, seed)?;
    for m in &plan.members {
        println!("-- {}", m.name);
        let mut infer = bins.cmd("infer");
        infer.arg("--model").arg(onnx_of(out, &m.name)).arg(&val).arg("--evaluate");
        println!("{}", accuracy_line(&bins::stdout_of(&mut infer)?)?);
    }
    for how in [&[][..], &["--vote", "soft"], &["--tta"], &["--vote", "soft", "--tta"]] {
        let what = if how.is_empty() { "majority vote".into() } else { how.join(" ") };
        let submitted = if how == SUBMISSION_VOTE { " (the submission's vote)" } else { "" };
        println!("-- ensemble of {ensemble}: {what}{submitted}");
        let mut infer = ensemble_cmd(bins, out, ensemble);
        infer.arg(&val).arg("--evaluate").args(how);
        println!("{}", accuracy_line(&bins::stdout_of(&mut infer)?)?);
    }
    Ok(())
}

/// The submission's vote: the majority of the members' shift-TTA predictions (planned in
/// docs/accuracy.md before the splits that estimate it were run).
const SUBMISSION_VOTE: &[&str] = &["--tta"];

/// The submission's vote of all members on DATA's test.csv, with its timings.
fn submit(args: &Args, bins: &Bins, ensemble: &str) -> Result<()> {
    println!("== submission: majority vote of {ensemble}, {}", SUBMISSION_VOTE.join(" "));
    bins::status_of(&mut submit_cmd(args, bins, ensemble), false)
}

fn submit_cmd(args: &Args, bins: &Bins, ensemble: &str) -> Command {
    let mut infer = ensemble_cmd(bins, &args.out, ensemble);
    infer.arg(&args.data).args(SUBMISSION_VOTE);
    infer.arg("-o").arg(&args.submission).arg("--timings").arg(args.out.join("timings.json"));
    infer
}

/// `infer` over the members' ONNX files in OUT/models, voting as `ensemble` names them.
fn ensemble_cmd(bins: &Bins, out: &Path, ensemble: &str) -> Command {
    let mut infer = bins.cmd("infer");
    infer.args(["--ensemble", ensemble, "--models-dir"]).arg(out.join("models"));
    infer
}

/// Lines in a file, as `wc -l` counts them.
fn lines(path: &Path) -> Result<usize> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.iter().filter(|&&b| b == b'\n').count())
}

fn onnx_of(out: &Path, name: &str) -> PathBuf {
    out.join("models").join(format!("{name}.onnx"))
}

/// infer --evaluate's first line about accuracy (what `grep -i accuracy | head -1` kept).
fn accuracy_line(stdout: &str) -> Result<&str> {
    stdout.lines().find(|l| l.to_ascii_lowercase().contains("accuracy")).context("infer --evaluate printed no accuracy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// Arguments as the defaults make them, without this process's FULL, JOBS, ... variables.
    fn args(full: bool, epochs: &str, members: &str) -> Args {
        Args {
            data: "data.zip".into(),
            epochs: epochs.parse().unwrap(),
            members: members.parse().unwrap(),
            full,
            split_seed: None,
            out: "runs/accuracy".into(),
            submission: "submission.csv".into(),
            jobs: None,
            threads: None,
            train_flags: String::new(),
            started: None,
        }
    }

    fn epochs(p: &Plan) -> Vec<(&str, u32)> {
        p.members.iter().map(|m| (m.name.as_str(), m.epochs)).collect()
    }

    #[test]
    fn the_help_states_the_recipes_length() {
        use clap::Args as _;
        let help = Args::augment_args(clap::Command::new("accuracy")).render_long_help().to_string();
        let want = [
            format!("[default: {RECIPE_EPOCHS}]"),
            format!("4/5 as many epochs ({})", full_data_epochs(RECIPE_EPOCHS)),
        ];
        for w in want {
            assert!(help.contains(&w), "{w:?} not in:\n{help}");
        }
    }

    #[test]
    fn full_trains_on_everything_for_32_epochs_one_lane_per_member_up_to_the_cpus() {
        let p = plan(&args(true, "", ""), 2).unwrap();
        assert_eq!(p.split_flags, ["--keep", "last", "--val-fraction", "0"]);
        assert_eq!(epochs(&p), [("cnn_digits_s1", 32), ("cnn_digits_s2", 32)]);
        assert_eq!((p.jobs, p.threads), (2, 1));
        // EPOCHS and a member's own epochs count over the split: FULL=1 makes the same steps.
        let p = plan(&args(true, "5", "cnn_digits:1,m5:1:2,cnn_digits:3,m5:2:1"), 16).unwrap();
        assert_eq!(epochs(&p), [("cnn_digits_s1", 4), ("m5_s1", 2), ("cnn_digits_s3", 4), ("m5_s2", 1)]);
        assert_eq!((p.jobs, p.threads), (4, 4));
    }

    #[test]
    fn the_estimate_holds_out_the_split_asked_for_for_40_epochs() {
        let mut a = args(false, "", "cnn_digits:1,cnn_digits:2");
        a.split_seed = Some(7);
        a.train_flags = " --device  cuda ".into();
        let p = plan(&a, 2).unwrap();
        assert_eq!(p.split_flags, ["--keep", "last", "--split-seed", "7"]);
        assert_eq!(p.train_flags, ["--device", "cuda"]);
        assert_eq!(p.members[0].epochs, 40);
        let p = plan(&args(false, "5", "cnn_digits:1,m5:1:2"), 2).unwrap();
        assert_eq!(epochs(&p), [("cnn_digits_s1", 5), ("m5_s1", 2)]);
        let mut a = args(false, "", "cnn_digits:1,cnn_digits:2");
        a.jobs = Some(1);
        let p = plan(&a, 2).unwrap();
        assert_eq!(p.split_flags, ["--keep", "last"]);
        assert_eq!((p.jobs, p.threads), (1, 2));
    }

    #[test]
    fn contradicting_or_malformed_settings_are_usage_errors() {
        let mut a = args(true, "", "cnn_digits:1");
        a.split_seed = Some(7);
        let err = plan(&a, 2).unwrap_err();
        assert_eq!(err.0, "SPLIT_SEED needs FULL=0 (FULL=1 holds nothing out)");
        assert_eq!(crate::exit_code(&err.into()), 2);
        // Given on the command line, these beat whatever the environment holds.
        for bad in [&["--full", "2", "d"][..], &["--split-seed", "x", "d"], &["--jobs", "0", "d"], &["d", "0"]] {
            let argv = [&["accuracy"][..], bad].concat();
            let err = Cli::try_parse_from(&argv).err().unwrap_or_else(|| panic!("{argv:?} must be refused"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{argv:?}: {err}");
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
        let ok = Cli::try_parse_from(["accuracy", "--full", "0", "d"]).unwrap();
        assert!(!ok.args.full);
        assert_eq!(parse_full("2").unwrap_err(), "FULL must be 0 or 1, got '2'");
    }

    #[test]
    fn the_submission_is_the_majority_vote_with_shift_tta() {
        let a = args(true, "", "");
        let bins = Bins::at("bin".into());
        let cmd = submit_cmd(&a, &bins, "cnn_digits_s1,cnn_digits_s2");
        let argv: Vec<_> = cmd.get_args().map(|s| s.to_string_lossy().into_owned()).collect();
        let want = "--ensemble cnn_digits_s1,cnn_digits_s2 --models-dir runs/accuracy/models data.zip --tta \
                    -o submission.csv --timings runs/accuracy/timings.json";
        assert_eq!(argv.join(" "), want);
        assert!(!argv.iter().any(|a| a == "--vote"), "majority is infer's default vote");
    }

    #[test]
    fn the_accuracy_line_is_the_first_that_mentions_it() {
        let out = "infer: 800 images\nAccuracy: 0.75 (600/800)\naccuracy again\n";
        assert_eq!(accuracy_line(out).unwrap(), "Accuracy: 0.75 (600/800)");
        assert!(accuracy_line("nothing\n").is_err());
    }
}
