//! Faults survived (issue #21): a training killed with SIGKILL at 20 moments, each followed by
//! `--resume` until the run completes, ends with the weights, optimiser state, checkpoint
//! metadata and MLflow metrics of an uninterrupted run, bit for bit.
//!
//! Random kill times rarely land in the narrow windows (between a checkpoint folder's two
//! renames; between an epoch's checkpoint and its metrics), so 9 of the kills are aimed at
//! named points through the trainer's fault hook (`TRAINER_FAULT_POINT`, see
//! `trainer/src/fault.rs`), 11 come at seeded random times, uniform over the uninterrupted
//! run's measured duration. The two tests run side by side under `--test-threads=2`.
//!
//! Bit-equality holds because the CPU runs with one libtorch thread (`common::trainer_args`),
//! so every reduction has one order, and a resume restores every stream: weights, EMA, Adam
//! moments and step, and the per-epoch seeds of shuffling, augmentation and dropout.

mod common;
#[path = "../../data/tests/common/killed_write.rs"]
mod killed_write;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use trainer::state::{self, TrainState};

const ARCH: &str = "cnn_digits";
const EPOCHS: usize = 3;
const NAMED_KILLS: usize = 9;
const RANDOM_KILLS: usize = 11;
/// Metrics that are measurements of the machine, not of the training: only their steps compare.
const TIMING_METRICS: [&str; 2] = ["epoch_seconds", "images_per_second"];
const METRICS: [&str; 7] = ["loss", "val_loss", "error", "accuracy", "lr", "epoch_seconds", "images_per_second"];
/// Files of `last/` and `best/` that must be byte-identical to the uninterrupted run's.
const SAME_BYTES: [&str; 5] = [
    "last/model.safetensors",
    "last/ema.safetensors",
    "last/optimizer.safetensors",
    "best/model.safetensors",
    "best/confusion_matrix.csv",
];

/// The strong recipe (EMA, augmentation, AdamW, one-cycle) on 480 sample rows: every piece of
/// state a resume must restore, in about a second an epoch.
fn args(dir: &Path) -> Vec<String> {
    let extra = ["--model", ARCH, "--recipe", "strong", "--epochs", "3", "--batch-size", "32"];
    let mut args = common::trainer_args(&extra, &common::sample_zip(), dir);
    args.extend(["--limit", "480", "--seed", "5", "--no-progress"].map(String::from));
    args
}

fn resume_args(dir: &Path, run_id: &str) -> Vec<String> {
    let mlruns = dir.join("mlruns").display().to_string();
    ["--resume", run_id, "--mlruns", &mlruns, "--threads", "1", "--no-progress"].map(String::from).to_vec()
}

fn arch_dir(dir: &Path) -> PathBuf {
    dir.join("ckpts").join(ARCH)
}

/// How one trainer process ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    fn killed(&self) -> bool {
        self.status.signal() == Some(9)
    }
    fn show(&self) -> String {
        format!("{:?}\nstdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs the trainer; SIGKILLs it after `kill_after` if it is still running then. `fault`
/// sets the trainer's fault hook.
fn run(args: &[String], kill_after: Option<Duration>, fault: Option<&str>) -> Ended {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(args).env_remove("MLFLOW_TRACKING_URI").env_remove(trainer::fault::ENV);
    if let Some(f) = fault {
        cmd.env(trainer::fault::ENV, f);
    }
    // Output to files: a pipe nobody reads could fill and stall the child.
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(Stdio::from(out.reopen().unwrap())).stderr(Stdio::from(err.reopen().unwrap()));
    let status = killed_write::run(cmd, kill_after.unwrap_or(Duration::from_secs(600)));
    let read = |f: &tempfile::NamedTempFile| std::fs::read_to_string(f.path()).unwrap();
    Ended { status, stdout: read(&out), stderr: read(&err) }
}

/// What a finished run left, to compare with the uninterrupted run's.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// SAME_BYTES, in order.
    files: Vec<Vec<u8>>,
    /// Per metric, (step, value bits); timing metrics with value 0.
    metrics: Vec<(String, Vec<(i64, u64)>)>,
    /// best/config.json's epoch and validation accuracy and loss (bits).
    best_meta: (usize, Option<u64>, Option<u64>),
    /// last/state.json's epochs: (epoch, train loss, val loss, val accuracy, lr), as bits.
    history: Vec<(usize, [u64; 4])>,
    status: String,
    tags: Vec<(String, String)>,
}

fn outcome(dir: &Path, run_id: &str) -> Outcome {
    let ad = arch_dir(dir);
    let files = SAME_BYTES.iter().map(|f| std::fs::read(ad.join(f)).unwrap_or_default()).collect();
    let (tracker, _) = trainer::train::open_tracking(dir.join("mlruns").to_str().unwrap()).unwrap();
    let run = tracker.open_run(run_id).unwrap();
    let metrics = METRICS
        .iter()
        .map(|&k| {
            let timing = TIMING_METRICS.contains(&k);
            let points = run.metric_history(k).unwrap();
            (k.to_string(), points.iter().map(|p| (p.2, if timing { 0 } else { p.1.to_bits() })).collect())
        })
        .collect();
    let meta = models::CheckpointMeta::load(&ad.join("best").join(models::CHECKPOINT_META_FILE)).unwrap();
    let saved = TrainState::load(&ad.join("last")).unwrap();
    let history = saved
        .history
        .iter()
        .map(|s| (s.epoch, [s.train_loss, s.val_loss, s.val_accuracy, s.lr].map(f64::to_bits)))
        .collect();
    let tags = run.tags().unwrap();
    let tags = ["best_epoch", "best_accuracy"].iter().map(|&k| (k.to_string(), tags[k].clone())).collect();
    Outcome {
        files,
        metrics,
        best_meta: (meta.epoch, meta.val_accuracy.map(f64::to_bits), meta.val_loss.map(f64::to_bits)),
        history,
        status: run.status().unwrap().to_string(),
        tags,
    }
}

/// The uninterrupted run, once per test binary: its outcome and duration (spawn to exit).
fn reference() -> &'static (Outcome, Duration, tempfile::TempDir) {
    static REF: OnceLock<(Outcome, Duration, tempfile::TempDir)> = OnceLock::new();
    REF.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let ended = run(&args(tmp.path()), None, None);
        let took = started.elapsed();
        assert!(ended.status.success(), "uninterrupted run failed: {}", ended.show());
        let run_id = common::printed_run_id(&ended.stdout);
        let o = outcome(tmp.path(), &run_id);
        assert_eq!(o.status, "FINISHED");
        assert!(o.metrics.iter().all(|(_, p)| p.iter().map(|x| x.0).eq(1..=EPOCHS as i64)), "{:?}", o.metrics);
        println!("uninterrupted run: {:.1} s, best epoch {}", took.as_secs_f64(), o.best_meta.0);
        (o, took, tmp)
    })
}

/// Where a kill left a run: the resumable run id and its completed epochs, if any.
fn resumable(dir: &Path) -> Option<(String, usize)> {
    let found = state::existing_dir(&arch_dir(dir).join("last"))?;
    let s = TrainState::load(&found).unwrap_or_else(|e| panic!("{} is not loadable: {e}", found.display()));
    Some((s.run_id, s.epoch))
}

/// A kill to inject: at a named fault point (`<name>:<n>`) or after a time.
#[derive(Debug, Clone)]
enum Kill {
    At(&'static str),
    After(Duration),
}

/// Tallies of a test, printed at its end.
#[derive(Debug, Default)]
struct Counts {
    kills: usize,
    resumes: usize,
    /// Kills before the run's first checkpoint existed: started again (a new run).
    restarts: usize,
    sequences: usize,
    equal: usize,
    /// Where each kill landed.
    landed: Vec<String>,
}

/// One run sequence: a fresh start, then a resume after every kill in `kills` (each applied
/// to the next process), until the run completes. A process that completes before its kill
/// fails the test when `strict` (a fault point never reached), else ends the sequence (a
/// random time past the run's end). Asserts the outcome equals the uninterrupted run's.
/// `between` runs after each landed kill (index, sequence folder).
fn sequence(name: &str, kills: &[Kill], strict: bool, counts: &mut Counts, between: &dyn Fn(usize, &Path)) {
    let (want, _, _) = reference();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut pending = kills.iter().enumerate();
    let mut next = pending.next();
    let mut last_run: Option<String> = None;
    counts.sequences += 1;
    let mut processes = 0;
    loop {
        processes += 1;
        assert!(processes < 30, "{name}: the run never completes");
        let target = resumable(dir);
        let a = match &target {
            Some((id, _)) => resume_args(dir, id),
            None => args(dir),
        };
        let (fault, after) = match next {
            Some((_, Kill::At(p))) => (Some(*p), None),
            Some((_, Kill::After(t))) => (None, Some(*t)),
            None => (None, None),
        };
        let ended = run(&a, after, fault);
        if let Some((id, epoch)) = &target {
            counts.resumes += 1;
            // A process killed at once may print nothing.
            let line = format!("resuming run {id} after epoch {epoch}/{EPOCHS}");
            let early = ended.killed() && ended.stdout.is_empty();
            assert!(early || ended.stdout.contains(&line), "{name}: expected {line:?}: {}", ended.show());
        }
        if !ended.killed() {
            assert!(ended.status.success(), "{name}: trainer failed: {}", ended.show());
            assert!(!strict || next.is_none(), "{name}: completed before kill {next:?}: {}", ended.show());
            let run_id = common::printed_run_id(&ended.stdout);
            assert_eq!(last_run.get_or_insert(run_id.clone()), &run_id, "{name}: the resumed run is the same run");
            break;
        }
        counts.kills += 1;
        if fault.is_some() {
            assert!(
                ended.stderr.contains("fault point"),
                "{name}: killed, but not by the fault point: {}",
                ended.show()
            );
        }
        let (i, _) = next.unwrap();
        let place = match resumable(dir) {
            None => {
                counts.restarts += 1;
                "before the first checkpoint: start again".to_string()
            }
            Some((_, e)) => format!("resumes after epoch {e}"),
        };
        let what = fault.map_or_else(|| format!("{:.2} s", after.unwrap().as_secs_f64()), str::to_string);
        counts.landed.push(format!("{name}: {what} -> {place}"));
        if let Some((id, _)) = resumable(dir) {
            // A resumable state belongs to the run this sequence started.
            let printed: Vec<&str> = ended.stdout.lines().filter_map(|l| l.strip_prefix("MLflow run ")).collect();
            if target.is_none() {
                assert!(
                    printed.iter().any(|l| l.starts_with(&id)),
                    "{name}: state of an unknown run {id}: {}",
                    ended.show()
                );
            }
            last_run = Some(id);
        }
        between(i, dir);
        next = pending.next();
    }
    let run_id = last_run.unwrap();
    let got = outcome(dir, &run_id);
    assert!(got.status == "FINISHED", "{name}: run {run_id} ended {}", got.status);
    for ((k, g), (_, w)) in got.metrics.iter().zip(&want.metrics) {
        assert_eq!(g, w, "{name}: metric {k} (step, value bits) differs from the uninterrupted run's");
    }
    for ((f, g), w) in SAME_BYTES.iter().zip(&got.files).zip(&want.files) {
        assert!(g == w, "{name}: {f} differs from the uninterrupted run's");
    }
    assert_eq!(got, *want, "{name}: outcome differs from the uninterrupted run's");
    // Nothing half-written is left beside the checkpoints (.last.old, .best.tmp, ...).
    let strays: Vec<_> = std::fs::read_dir(arch_dir(dir)).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(strays.len(), 2, "{name}: {strays:?}");
    counts.equal += 1;
}

fn report(what: &str, c: &Counts) {
    println!(
        "{what}: {} kills, {} resumes, {} restarts (killed before the first checkpoint), {}/{} sequences equal to the uninterrupted run",
        c.kills, c.resumes, c.restarts, c.equal, c.sequences
    );
    for l in &c.landed {
        println!("  {l}");
    }
}

#[test]
fn kills_at_named_fault_points_resume_to_the_uninterrupted_result() {
    let mut c = Counts::default();
    let none = |_: usize, _: &Path| {};
    // Between last/'s renames in epoch 2, then, resuming from the backup, just before the new
    // folder takes last/'s place: the backup must survive until then.
    sequence(
        "double fault",
        &[Kill::At("last/between_renames:2"), Kill::At("last/before_swap:1")],
        true,
        &mut c,
        &none,
    );
    // The epoch checkpointed, its metrics not logged: the resume logs them, once.
    sequence("before metrics", &[Kill::At("before_metrics:2")], true, &mut c, &none);
    // Killed inside the file store's log_metrics: the first key ("loss") of epoch 1 written,
    // the others not (simulated: the hook cannot stop the tracking crate's loop halfway).
    let partial = |_: usize, dir: &Path| {
        let (id, epoch) = resumable(dir).unwrap();
        let s = TrainState::load(&state::existing_dir(&arch_dir(dir).join("last")).unwrap()).unwrap();
        let (tracker, _) = trainer::train::open_tracking(dir.join("mlruns").to_str().unwrap()).unwrap();
        let run = tracker.open_run(&id).unwrap();
        run.log_metrics(&[("loss", s.history[epoch - 1].train_loss)], epoch as i64).unwrap();
    };
    sequence("inside log_metrics", &[Kill::At("before_metrics:1")], true, &mut c, &partial);
    sequence("best between renames", &[Kill::At("best/between_renames:1")], true, &mut c, &none);
    sequence("best written, not swapped", &[Kill::At("best/filled:1")], true, &mut c, &none);
    // Hits: epoch 0's last (1), epoch 1's best (2): weights written, config.json not.
    sequence("between checkpoint files", &[Kill::At("checkpoint/between_files:2")], true, &mut c, &none);
    sequence("last swapped, backup kept", &[Kill::At("last/renamed:3")], true, &mut c, &none);
    // The same in the last epoch: the resume has no epoch left whose swap would remove the
    // backup, so it tidies it away itself.
    sequence("last epoch swapped, backup kept", &[Kill::At("last/renamed:4")], true, &mut c, &none);
    report("named fault points", &c);
    assert_eq!(c.kills, NAMED_KILLS);
    // Every point is reached after the run and its epoch-0 checkpoint exist: all resume.
    assert_eq!(c.restarts, 0, "{c:?}");
    assert_eq!(c.equal, c.sequences);
}

#[test]
fn kills_at_random_times_resume_to_the_uninterrupted_result() {
    let (_, took, _) = reference();
    let mut rng = data::Rng::new(0x21);
    let mut c = Counts::default();
    // Up to 3 kills a sequence (fresh start, then resumes), each after a time uniform over
    // the uninterrupted run's duration; a process that finishes first ends its sequence.
    while c.kills < RANDOM_KILLS {
        let n = (RANDOM_KILLS - c.kills).min(3);
        let kills: Vec<Kill> = (0..n).map(|_| Kill::After(took.mul_f64(rng.next_f64()))).collect();
        sequence(&format!("random #{}", c.sequences + 1), &kills, false, &mut c, &|_, _| {});
        assert!(c.sequences < 20, "random kills keep missing: {c:?}");
    }
    report("random kill times", &c);
    assert_eq!(c.kills, RANDOM_KILLS);
    assert_eq!(c.equal, c.sequences);
}

/// Paths, sizes and modification times of every file under `dir`.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut files: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (p, m.len(), m.modified().unwrap())
        })
        .collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(walk(&p));
        } else {
            found.push(p);
        }
    }
    found
}

/// Corrupt or foreign inputs to `--resume` and `--pretrained` (issue #21): a truncated
/// model.safetensors, a state.json of another architecture, a truncated state.json and
/// truncated pretrained weights each fail on one line naming the file, exit non-zero and
/// write nothing (no file under the checkpoints or the MLflow store changes).
#[test]
fn corrupt_checkpoints_fail_on_one_line_and_write_nothing() {
    let (_, _, ref_dir) = reference();
    let tmp = tempfile::tempdir().unwrap();
    let last = tmp.path().join("last");
    std::fs::create_dir(&last).unwrap();
    for e in std::fs::read_dir(arch_dir(ref_dir.path()).join("last")).unwrap().flatten() {
        std::fs::copy(e.path(), last.join(e.file_name())).unwrap();
    }
    let weights = last.join(models::CHECKPOINT_WEIGHTS_FILE);
    let state_file = last.join(state::STATE_FILE);
    let (good_weights, good_state) = (std::fs::read(&weights).unwrap(), std::fs::read_to_string(&state_file).unwrap());
    let pretrained = tmp.path().join("pretrained.safetensors");
    std::fs::write(&pretrained, &good_weights[..good_weights.len() / 2]).unwrap();
    let fresh = tmp.path().join("fresh");
    let resume = vec!["--resume".to_string(), last.display().to_string(), "--no-progress".into()];
    type Corrupt<'a> = (&'a str, &'a Path, &'a str, Box<dyn Fn() + 'a>, Vec<String>);
    let cases: Vec<Corrupt> = vec![
        (
            "truncated weights",
            &weights,
            "not a valid safetensors file",
            Box::new(|| std::fs::write(&weights, &good_weights[..good_weights.len() / 2]).unwrap()),
            resume.clone(),
        ),
        (
            "state of another architecture",
            &weights,
            "does not match m5",
            Box::new(|| {
                std::fs::write(&weights, &good_weights).unwrap();
                std::fs::write(&state_file, good_state.replace("\"model\": \"cnn_digits\"", "\"model\": \"m5\""))
                    .unwrap();
            }),
            resume.clone(),
        ),
        (
            "truncated state",
            &state_file,
            "not a trainer state file",
            Box::new(|| std::fs::write(&state_file, &good_state[..good_state.len() / 2]).unwrap()),
            resume.clone(),
        ),
        ("truncated pretrained weights", &pretrained, "pretrained", Box::new(|| {}), {
            let mut a = args(&fresh);
            a.extend(["--pretrained".to_string(), pretrained.display().to_string()]);
            a
        }),
    ];
    for (what, file, says, corrupt, a) in cases {
        corrupt();
        let before = (snapshot(tmp.path()), snapshot(ref_dir.path()));
        let ended = run(&a, None, None);
        assert!(!ended.status.success() && !ended.killed(), "{what}: {}", ended.show());
        let lines: Vec<&str> = ended.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line: {}", ended.show());
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(&file.display().to_string()),
            "{what}: {}",
            ended.show()
        );
        assert!(lines[0].contains(says), "{what}: {}", ended.show());
        assert_eq!((snapshot(tmp.path()), snapshot(ref_dir.path())), before, "{what}: files changed");
        assert!(!fresh.exists(), "{what}: a refused --pretrained wrote {}", fresh.display());
        println!("{what}: {}", lines[0]);
    }
}
