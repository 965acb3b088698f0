//! Runs that survive: kill -9 in the middle of an epoch and `--resume` gives the same result
//! as an uninterrupted run, with one metric value per epoch in MLflow; Ctrl-C ends a run KILLED
//! and it resumes from its checkpoint folder; several architectures in one call keep going
//! past a failure and print a summary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EPOCHS: &str = "3";

/// The interrupted runs' arguments (the spawned ones print no progress bars either).
fn args(dir: &Path) -> Vec<String> {
    let extra = ["--model", "squeezenet1_1", "--recipe", "strong", "--epochs", EPOCHS, "--batch-size", "16"];
    let mut args = common::trainer_args(&extra, &common::sample_zip(), dir);
    args.extend(["--limit", "1000", "--seed", "9", "--no-progress"].map(String::from));
    args
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trainer starts")
}

/// Reads the child's stdout until a line starts with `prefix`; returns the lines read.
fn read_until(child: &mut Child, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let reader = BufReader::new(child.stdout.as_mut().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        let done = line.starts_with(prefix);
        lines.push(line);
        if done {
            return lines;
        }
    }
    panic!("trainer ended before printing {prefix:?}:\n{}", lines.join("\n"));
}

/// Polls until the `last/` checkpoint folder holds `epoch` (its `state.json` is written last,
/// atomically, so a folder that has it is complete); fails if the trainer exits first.
fn wait_for_checkpoint(child: &mut Child, last: &Path, epoch: usize) -> trainer::state::TrainState {
    let started = Instant::now();
    loop {
        if let Ok(state) = trainer::state::TrainState::load(last) {
            if state.epoch >= epoch {
                return state;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("trainer exited ({status}) before checkpointing epoch {epoch} in {}", last.display());
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint of epoch {epoch} in {} after 300 s",
            last.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_id_of(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("MLflow run ").and_then(|r| r.split_whitespace().next()))
        .expect("run id printed")
        .to_string()
}

fn read_run(mlruns: &Path, run_id: &str) -> serde_json::Value {
    common::python_json(common::READ_RUN_FULL, &[mlruns.canonicalize().unwrap().to_str().unwrap(), run_id])
}

#[test]
fn kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ref_args: Vec<String> = args(&tmp.path().join("ref")).into_iter().filter(|a| a != "--no-progress").collect();
    let reference = common::run_trainer(&ref_args);
    let ref_out = common::text(&reference.stdout);
    assert!(reference.status.success(), "{ref_out}{}", common::text(&reference.stderr));

    let dir = tmp.path().join("killed");
    let mut child = spawn(&args(&dir));
    let lines = read_until(&mut child, "epoch 1/");
    let run_id = run_id_of(&lines);
    // The epoch line is printed before the checkpoint is written: wait for the checkpoint
    // itself, then a third of the epoch's own time into epoch 2, then SIGKILL.
    let last = dir.join("ckpts/squeezenet1_1/last");
    let epoch_1 = wait_for_checkpoint(&mut child, &last, 1);
    std::thread::sleep(Duration::from_secs_f64(epoch_1.history[0].seconds / 3.0));
    child.kill().unwrap();
    child.wait().unwrap();
    let saved = trainer::state::TrainState::load(&last).unwrap();
    assert_eq!(saved.epoch, 1, "the kill was meant to land in epoch 2");
    // `--memory-format auto` is saved as what it picked, so a resume cannot pick again.
    assert_eq!(saved.options.memory_format, trainer::MemoryFormat::Contiguous);
    let before = read_run(&dir.join("mlruns"), &run_id);
    assert_eq!(before["status"], "RUNNING", "a killed process cannot end its run");

    let out = common::run_trainer(&[
        "--resume",
        run_id.as_str(),
        "--mlruns",
        dir.join("mlruns").to_str().unwrap(),
        "--threads",
        "1",
    ]);
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "resume failed:\n{stdout}\n{}", common::text(&out.stderr));
    assert!(stdout.contains(&format!("resuming run {run_id} after epoch 1/3")), "{stdout}");
    assert_eq!(common::printed_run_id(&stdout), run_id, "a resume continues the same run");

    // Same epochs 2 and 3 as without the kill: weights, EMA, Adam moments and RNG streams
    // were all restored.
    assert_eq!(common::epoch_lines(&stdout), common::epoch_lines(&ref_out)[1..].to_vec(), "{stdout}\n{ref_out}");
    let best = |d: &Path| std::fs::read(d.join("ckpts/squeezenet1_1/best/model.safetensors")).unwrap();
    assert!(best(&dir) == best(&tmp.path().join("ref")), "resumed best weights differ from the uninterrupted run's");

    let run = read_run(&dir.join("mlruns"), &run_id);
    assert_eq!(run["status"], "FINISHED");
    common::assert_one_value_per_epoch(&run, 3);
    assert!(run["checkpoint"].as_array().unwrap().iter().any(|p| p == "checkpoint/model.safetensors"), "{run}");
}

#[test]
fn ctrl_c_ends_the_run_killed_and_it_resumes_from_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ctrlc");
    let mut child = spawn(&args(&dir));
    let lines = read_until(&mut child, "epoch 1/");
    let run_id = run_id_of(&lines);
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert_eq!(code.code(), Some(130), "Ctrl-C exits with 130");
    let run = read_run(&dir.join("mlruns"), &run_id);
    assert_eq!(run["status"], "KILLED", "{run}");
    let done = trainer::state::TrainState::load(&dir.join("ckpts/squeezenet1_1/last")).unwrap().epoch;
    assert!(done >= 1);

    let out =
        common::run_trainer(&["--resume", dir.join("ckpts/squeezenet1_1/last").to_str().unwrap(), "--threads", "1"]);
    assert!(out.status.success(), "{}{}", common::text(&out.stdout), common::text(&out.stderr));
    let run = read_run(&dir.join("mlruns"), &run_id);
    assert_eq!(run["status"], "FINISHED");
    common::assert_one_value_per_epoch(&run, 3);

    // Training options cannot change on resume.
    let out = common::run_trainer(&["--resume", run_id.as_str(), "--lr", "0.1"]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("saved configuration"), "{}", common::text(&out.stderr));
}

#[test]
fn several_models_train_one_after_another_past_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = common::sample_zip();
    // squeezenet1_1 weights as --pretrained: fine for squeezenet1_1, refused for m5 (the same
    // architecture twice shows that the run after a failure still happens).
    let first = common::run_trainer(&common::trainer_args(
        &["--model", "squeezenet1_1", "--limit", "200"],
        &sample,
        &tmp.path().join("w"),
    ));
    assert!(first.status.success(), "{}", common::text(&first.stderr));
    let weights = tmp.path().join("w/ckpts/squeezenet1_1/best/model.safetensors");
    let weights = weights.to_str().unwrap();
    let extra = ["--model", "squeezenet1_1,m5,squeezenet1_1", "--limit", "200", "--pretrained", weights];
    let out = common::run_trainer(&common::trainer_args(&extra, &sample, tmp.path()));
    let stdout = common::text(&out.stdout);
    let stderr = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "one failure makes the exit status non-zero:\n{stdout}\n{stderr}");
    assert!(stderr.contains("training m5 failed") && stderr.contains("1 of 3 trainings failed"), "{stderr}");
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(table[0], "| arch | best val accuracy | epochs | time (s) | img/s | status |", "{stdout}");
    assert!(table[1].starts_with("| squeezenet1_1 | 0.") && table[1].ends_with("| ok |"), "{stdout}");
    assert!(table[2].starts_with("| m5 | - |") && table[2].contains("failed: "), "{stdout}");
    assert!(table[3].starts_with("| squeezenet1_1 | 0.") && table[3].ends_with("| ok |"), "{stdout}");
    assert!(tmp.path().join("ckpts/squeezenet1_1/best/model.safetensors").is_file());
    assert!(!tmp.path().join("ckpts/m5").exists(), "the failed architecture wrote nothing");
    // Each trained architecture is its own run.
    let ids: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("MLflow run id: ")).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}
