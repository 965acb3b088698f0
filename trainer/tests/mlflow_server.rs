//! The trainer against a real `mlflow server` (the venv's mlflow, sqlite backend, artifact
//! proxy, 127.0.0.1) through MLFLOW_TRACKING_URI: `--experiment`, params, per-epoch metrics,
//! tags and artifacts, read back with MlflowClient; the server is stopped after epoch 1 and
//! started again after epoch 2, and nothing is lost.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `mlflow server` in its own process group (so stopping it also stops uvicorn).
struct Server {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(common::venv_python())
            .args(["-m", "mlflow", "server", "--backend-store-uri"])
            .arg(format!("sqlite:///{}", self.dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(self.dir.join("artifacts"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--workers", "1"])
            .current_dir(&self.dir)
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env("GIT_PYTHON_REFRESH", "quiet")
            .env_remove("MLFLOW_TRACKING_URI")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("mlflow server starts");
        self.child = Some(child);
        let started = Instant::now();
        let probe = tracking::RestStore::new(&self.uri()).unwrap();
        while probe.health().is_err() {
            assert!(started.elapsed() < Duration::from_secs(180), "mlflow server not healthy after 180 s");
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mlflow server exited with {status}: {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let t = Instant::now();
        while child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_line(lines: &mut impl Iterator<Item = String>, prefix: &str, seen: &mut Vec<String>) {
    for line in lines.by_ref() {
        let hit = line.starts_with(prefix);
        seen.push(line);
        if hit {
            return;
        }
    }
    panic!("trainer ended before {prefix:?}:\n{}", seen.join("\n"));
}

#[test]
fn trains_into_an_mlflow_server_that_restarts_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Server { dir: tmp.path().to_path_buf(), port, child: None };
    server.start();
    let ckpts = tmp.path().join("ckpts");
    let sample = common::sample_zip();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["--model", "squeezenet1_1", "--recipe", "strong", "--epochs", "3", "--batch-size", "16"])
        .args(["--limit", "1500", "--device", "cpu", "--threads", "1", "--no-progress"])
        .args(["--experiment", "trainer-rest"])
        .arg("--data")
        .arg(&sample)
        .arg("--output-dir")
        .arg(&ckpts)
        .env("MLFLOW_TRACKING_URI", server.uri())
        .env("MLFLOW_TRACKING_FLUSH_TIMEOUT", "300")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map(Result::unwrap);
    let mut seen = Vec::new();
    wait_for_line(&mut lines, "epoch 1/", &mut seen);
    server.stop();
    wait_for_line(&mut lines, "epoch 2/", &mut seen);
    server.start();
    seen.extend(lines);
    let status = child.wait().unwrap();
    let stderr = errors.join().unwrap();
    let stdout = seen.join("\n");
    assert!(status.success(), "trainer failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("MLflow server unreachable"), "the outage was not noticed:\n{stderr}");
    let run_id = common::printed_run_id(&stdout);

    let run = common::python_json(common::READ_RUN_FULL, &[&server.uri(), &run_id]);
    assert_eq!(run["status"], "FINISHED", "{run}");
    assert_eq!(run["experiment"], "trainer-rest");
    assert_eq!(run["run_name"], "squeezenet1_1");
    assert_eq!(run["tags"]["device"], "cpu");
    common::assert_one_value_per_epoch(&run, 3);
    let printed: Vec<f64> = common::epoch_lines(&stdout)
        .iter()
        .map(|l| l.split("val_accuracy ").nth(1).unwrap().trim().parse().unwrap())
        .collect();
    let logged: Vec<f64> =
        run["metrics"]["accuracy"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
    assert_eq!(logged.len(), 3);
    for (p, l) in printed.iter().zip(&logged) {
        assert!((p - l).abs() < 5e-7, "printed {printed:?}, logged {logged:?}");
    }
    assert_eq!(run["params"]["recipe"], "strong");
    assert_eq!(run["params"]["tracking_uri"], server.uri());
    assert_eq!(run["artifacts"], serde_json::json!(common::BEST_EPOCH_ARTIFACTS));
    assert_eq!(run["checkpoint"], serde_json::json!(common::CHECKPOINT_ARTIFACTS));
    // The uploaded checkpoint is the local best one, byte for byte.
    let stored = server.dir.join("artifacts");
    let uploaded = common::files_named(&stored, "model.safetensors");
    assert_eq!(uploaded.len(), 1, "weights in the server's artifact store: {uploaded:?}");
    assert!(
        std::fs::read(&uploaded[0]).unwrap()
            == std::fs::read(ckpts.join("squeezenet1_1/best/model.safetensors")).unwrap()
    );
}
