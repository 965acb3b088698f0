//! A real `mlflow server` for tests (sqlite backend, artifact proxy, 127.0.0.1 on a free
//! port), shared by the tracking crate's REST test and the exporter's registry test
//! (`#[path]`-included there).
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracking::{RestOptions, RestStore};

#[path = "../../../data/tests/common/skip.rs"]
mod skip;

/// The venv's python, or `None` (recorded as a skip of `test`) when SKIP_PYTHON_TESTS=1.
pub fn venv_python(test: &str) -> Option<PathBuf> {
    if std::env::var("SKIP_PYTHON_TESTS").is_ok_and(|v| v == "1") {
        skip::skip(test, "SKIP_PYTHON_TESTS=1");
        return None;
    }
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        py.is_file(),
        "the MLflow server test needs {} with mlflow installed (scripts/setup.sh); \
         set SKIP_PYTHON_TESTS=1 to skip it",
        py.display()
    );
    Some(py)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `mlflow server`, in its own process group so that stopping it
/// also stops uvicorn; stopped (and the group killed) on drop.
pub struct MlflowServer {
    python: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    starts: usize,
}

impl MlflowServer {
    pub fn new(python: &Path, dir: &Path) -> Self {
        MlflowServer { python: python.to_path_buf(), dir: dir.to_path_buf(), port: free_port(), child: None, starts: 0 }
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.starts))
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = fs::File::create(self.log_path()).unwrap();
        let child = Command::new(&self.python)
            .args(["-m", "mlflow", "server", "--backend-store-uri"])
            .arg(format!("sqlite:///{}", self.dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(self.dir.join("artifacts"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--workers", "1"])
            .current_dir(&self.dir)
            // The job runner (huey consumers) is not needed and costs CPU at startup.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env_remove("MLFLOW_TRACKING_URI")
            .env("GIT_PYTHON_REFRESH", "quiet")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {} -m mlflow server: {e}", self.python.display()));
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(180));
    }

    pub fn wait_healthy(&mut self, limit: Duration) {
        let probe = RestStore::with_options(
            &self.uri(),
            RestOptions { request_timeout: Duration::from_secs(2), ..RestOptions::default() },
        )
        .unwrap();
        let started = Instant::now();
        loop {
            if probe.health().is_ok() {
                eprintln!("mlflow server on port {} up after {:.1}s", self.port, started.elapsed().as_secs_f64());
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mlflow server exited with {status}:\n{}", self.log_tail());
            }
            assert!(started.elapsed() < limit, "mlflow server not healthy after {limit:?}:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn signal_group(pgid: u32, sig: &str) {
        let _ = Command::new("kill").args([sig, "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
    }

    /// SIGTERM to the whole group, wait for the server to exit (SIGKILL after
    /// 20 s), then make sure nothing of the group is left.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pgid = child.id();
        Self::signal_group(pgid, "-TERM");
        let t = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                Self::signal_group(pgid, "-KILL");
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Self::signal_group(pgid, "-KILL");
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}
