//! `xtask results-table` (`scripts/results_table.sh`, issue #8): the per-architecture table of
//! docs/accuracy.md in the seed project's shape: for each architecture the best validation
//! accuracy with the seed recipe and with the strong recipe, its parameter count, and inference
//! ms/batch (batch 64) with ort and with tract.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use models::Arch;

use crate::args::{Archs, OrDefault};
use crate::bins::{self, Bins, Clock};
use crate::lanes;

const LONG_ABOUT: &str = "\
The per-architecture results table: every architecture trained with the seed recipe and with the \
strong recipe on the trainer's default split of DATA's train.csv, in JOBS lanes of THREADS \
libtorch threads. The strong recipe's best checkpoint is exported and timed with ort and with \
tract on the first 21 batches of 64 of test.csv (fewer for a small test.csv: one warm-up, the \
rest timed, 2 threads). Writes OUT/table.md; OUT is emptied first unless TIMING_ONLY or RESUME.

TIMING_ONLY=1 skips training and re-times the checkpoints of the last run (timings want a quiet \
machine; the accuracies do not). RESUME=1 keeps the trainings the last run finished (a log with \
its `best:` line and a checkpoint) and does the rest, e.g. after an interruption.";

/// Batches of 64 of test.csv fed to the timing: one warm-up and 20 timed.
const TIMING_BATCHES: usize = 21;
const TIMING_BATCH: usize = 64;

#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT)]
pub struct Args {
    /// Kaggle's digit-recognizer.zip (or sample/digit-recognizer.zip for a quick table)
    pub data: PathBuf,
    /// Epochs with --recipe seed [default: 1]
    #[arg(default_value = "", hide_default_value = true)]
    pub seed_epochs: OrDefault<NonZeroU32>,
    /// Epochs with --recipe strong [default: 3]
    #[arg(default_value = "", hide_default_value = true)]
    pub strong_epochs: OrDefault<NonZeroU32>,
    /// Comma list of architectures [default: the whole zoo, as `trainer --list-archs` prints it]
    #[arg(default_value = "", hide_default_value = true)]
    pub archs: OrDefault<Archs>,
    /// Folder for the table, logs, checkpoints, ONNX files and timings
    #[arg(long, env = "OUT", default_value = "runs/results")]
    pub out: PathBuf,
    /// Skip training and re-time the last run's checkpoints (any value but 0, false, no, off)
    #[arg(long, env = "TIMING_ONLY", value_parser = clap::builder::FalseyValueParser::new())]
    pub timing_only: bool,
    /// Keep the trainings the last run finished and do the rest
    #[arg(long, env = "RESUME", value_parser = clap::builder::FalseyValueParser::new())]
    pub resume: bool,
    /// Trainings at once [default: one per CPU]
    #[arg(long, env = "JOBS", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// libtorch threads per training [default: CPUs / JOBS]
    #[arg(long, env = "THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

pub fn run(args: Args) -> Result<()> {
    let archs = args.archs.0.clone().map_or_else(|| Arch::ALL.to_vec(), |a| a.0);
    let seed_epochs = args.seed_epochs.0.map_or(1, NonZeroU32::get);
    let strong_epochs = args.strong_epochs.0.map_or(3, NonZeroU32::get);
    let bins = Bins::beside_me()?;
    let (out, data) = (&args.out, &args.data);
    let clock = Clock::start();
    if !args.timing_only && !args.resume && out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("emptying {}", out.display()))?;
    }
    let logs = out.join("logs");
    for dir in [logs.clone(), out.join("onnx")] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // One training per (recipe, architecture).
    let jobs: Vec<(&str, Arch, u32)> = [("seed", seed_epochs), ("strong", strong_epochs)]
        .into_iter()
        .flat_map(|(recipe, epochs)| archs.iter().map(move |&arch| (recipe, arch, epochs)))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes_n = args.jobs.map_or(cpus, |j| j as usize);
    let threads = args.threads.map_or((cpus / lanes_n).max(1), |t| t as usize);
    if !args.timing_only {
        println!(
            "== {} training jobs in {lanes_n} lane(s) of {threads} thread(s); logs in {}",
            jobs.len(),
            logs.display()
        );
        let trained = lanes::run(lanes_n, jobs.len(), |i, lane| {
            let (recipe, arch, epochs) = jobs[i];
            let log = logs.join(format!("{recipe}-{arch}.log"));
            if args.resume && finished(out, recipe, arch, &log) {
                println!("== lane {lane}: {recipe} recipe, {arch}: kept from the last run");
                return Ok(());
            }
            let mut trainer = bins.cmd("trainer");
            trainer
                .args(["--model", arch.name(), "--recipe", recipe, "--epochs", &epochs.to_string(), "--data"])
                .arg(data)
                .args(["--threads", &threads.to_string(), "--output-dir"])
                .arg(out.join(recipe))
                .args(["--experiment", &format!("results-{recipe}"), "--no-progress"]);
            lanes::logged(&format!("{recipe} {arch}"), &log, &mut [trainer])?;
            let best = bins::best_of(&fs::read_to_string(&log).unwrap_or_default());
            println!(
                "== lane {lane}: {recipe} recipe, {arch}, {epochs} epoch(s), done after {} s: {best}",
                clock.secs()
            );
            Ok(())
        });
        trained.with_context(|| format!("a training job failed (logs in {})", logs.display()))?;
    }

    let head = out.join("test_head.csv");
    write_test_head(data, &head)?;
    let table = out.join("table.md");
    fs::write(
        &table,
        format!(
            "| architecture | val accuracy, seed recipe ({} ep) | val accuracy, strong recipe ({} ep) | parameters | ms/batch ort | ms/batch tract |\n|---|---:|---:|---:|---:|---:|\n",
            seed_epochs, strong_epochs
        ),
    )
    .with_context(|| format!("writing {}", table.display()))?;
    for &arch in &archs {
        let row = row(&bins, out, arch, &head)?;
        println!("{row}");
        // Row by row, so that a failure keeps the rows before it.
        let mut file =
            OpenOptions::new().append(true).open(&table).with_context(|| format!("opening {}", table.display()))?;
        writeln!(file, "{row}").with_context(|| format!("writing {}", table.display()))?;
    }
    println!("== wrote {} in {} s after the build", table.display(), clock.secs());
    Ok(())
}

/// A training the last run finished: its checkpoint and its log's closing `best:` line.
fn finished(out: &Path, recipe: &str, arch: Arch, log: &Path) -> bool {
    let config = out.join(recipe).join(arch.name()).join("best/config.json");
    config.is_file() && fs::read_to_string(log).is_ok_and(|l| l.lines().any(|l| l.starts_with("best:")))
}

/// One architecture's row: both accuracies, the parameter count, and the strong recipe's
/// checkpoint exported and timed with each backend.
fn row(bins: &Bins, out: &Path, arch: Arch, head: &Path) -> Result<String> {
    let seed_acc = val_accuracy(&out.join("seed").join(arch.name()).join("best/config.json"))?;
    let strong = out.join("strong").join(arch.name()).join("best");
    let strong_acc = val_accuracy(&strong.join("config.json"))?;
    let log = out.join("logs").join(format!("strong-{arch}.log"));
    let log_text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let params = parameters(&log_text, arch).with_context(|| format!("{}: no parameter count", log.display()))?;
    let onnx = out.join("onnx").join(format!("{arch}.onnx"));
    bins::status_of(bins.cmd("exporter").arg("--checkpoint").arg(&strong).arg("-o").arg(&onnx), true)?;
    let mut ms = Vec::new();
    for backend in ["ort", "tract"] {
        let timings = out.join(format!("timing_{arch}_{backend}.json"));
        let mut infer = bins.cmd("infer");
        infer.arg("--model").arg(&onnx).arg(head).args(["--backend", backend, "--batch-size", "64", "--threads", "2"]);
        infer.arg("-o").arg(out.join(format!("sub_{arch}.csv"))).arg("--timings").arg(&timings);
        bins::status_of(&mut infer, true)?;
        ms.push(mean_ms(&timings)?);
    }
    Ok(format!("| {arch} | {seed_acc:.4} | {strong_acc:.4} | {params} | {:.1} | {:.1} |", ms[0], ms[1]))
}

fn json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn val_accuracy(config: &Path) -> Result<f64> {
    json(config)?["val_accuracy"].as_f64().with_context(|| format!("{}: no val_accuracy", config.display()))
}

fn mean_ms(timings: &Path) -> Result<f64> {
    json(timings)?["models"][0]["mean_ms"]
        .as_f64()
        .with_context(|| format!("{}: no models[0].mean_ms", timings.display()))
}

/// The trainer's "model: ARCH (N trainable parameters, ...)" line's N.
fn parameters(log: &str, arch: Arch) -> Option<u64> {
    let prefix = format!("model: {arch} (");
    log.lines().find_map(|line| {
        let rest = &line[line.find(&prefix)? + prefix.len()..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        rest[digits..].starts_with(" trainable").then(|| rest[..digits].parse().ok()).flatten()
    })
}

/// The timing input: the first 21 x 64 rows of DATA's test.csv (fewer whole batches for a
/// smaller test.csv, such as the sample's).
fn write_test_head(data: &Path, head: &Path) -> Result<()> {
    let test =
        data::load(data, data::Split::Test).with_context(|| format!("reading test.csv of {}", data.display()))?;
    let rows = TIMING_BATCHES.min(test.len() / TIMING_BATCH) * TIMING_BATCH;
    ensure!(rows > 0, "{}: fewer than {TIMING_BATCH} images, nothing to time", test.source);
    let first: Vec<usize> = (0..rows).collect();
    data::write_csv(head, &test.subset(&first)).with_context(|| format!("writing {}", head.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_count_is_the_named_architectures() {
        let log = "model: cnn_digits_x (1 trainable)\nmodel: cnn_digits (325994 trainable parameters, 37 tensors), recipe Strong\n";
        assert_eq!(parameters(log, Arch::CnnDigits), Some(325994));
        assert_eq!(parameters(log, Arch::M5), None);
        assert_eq!(parameters("model: m5 (12 tensors)\n", Arch::M5), None);
    }

    #[test]
    fn the_test_head_is_whole_batches_of_the_first_rows() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample/digit-recognizer.zip");
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("head.csv");
        write_test_head(&sample, &head).unwrap();
        let all = data::load(&sample, data::Split::Test).unwrap();
        let got = data::load_csv(&head).unwrap();
        assert_eq!(got.len(), (all.len() / 64).min(21) * 64);
        assert!(!got.is_empty() && got.images[..] == all.images[..got.images.len()]);
    }
}
