//! Shared test fixture: ONNX models built by `make_models.py` with the project's venv
//! (torch exports them, Python onnxruntime computes the reference logits).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use data::{Dataset, Split};

/// Images of the sample's test.csv the reference logits cover.
pub const N_REF: usize = 64;
/// Members built by the script.
pub const MEMBERS: [&str; 3] = ["cnn_a", "cnn_b", "cnn_c"];

pub struct Fixture {
    pub dir: PathBuf,
    pub n: usize,
    pub classes: usize,
    /// Python onnxruntime logits per member on the first `N_REF` test images.
    pub logits: HashMap<String, Vec<f32>>,
    pub train_total: usize,
    /// Python onnxruntime: train.csv images each member gets right.
    pub train_correct: HashMap<String, usize>,
}

impl Fixture {
    pub fn model(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.onnx"))
    }

    pub fn expected(&self, name: &str) -> &[f32] {
        &self.logits[name]
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate is inside the workspace").to_path_buf()
}

pub fn sample_zip() -> PathBuf {
    workspace_root().join("sample").join("digit-recognizer.zip")
}

/// The venv python; the tests compare against real tools, so a missing venv is a failure.
pub fn venv_python() -> PathBuf {
    let py = workspace_root().join(".venv").join("bin").join("python");
    assert!(
        py.exists(),
        "{} is missing: these tests build their ONNX models with torch and compare against \
         Python onnxruntime; run scripts/setup.sh first",
        py.display()
    );
    py
}

/// The first `N_REF` images of the committed sample's test.csv.
pub fn reference_images() -> Dataset {
    let test = data::load(&sample_zip(), Split::Test).expect("sample test.csv loads");
    let idx: Vec<usize> = (0..N_REF).collect();
    test.subset(&idx)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Builds the models once per script version: cached under cargo's per-target temp dir,
/// keyed by a hash of the script, so the test binaries share one ~10 s build.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("make_models.py");
        let source = std::fs::read(&script).expect("read make_models.py");
        let tmp_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp_root.join(format!("inference-fixture-{:016x}", fnv1a(&source)));
        if !dir.join("expected.json").exists() {
            let work = tmp_root.join(format!("inference-fixture-build-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&work);
            let out = Command::new(venv_python())
                .arg("-W")
                .arg("ignore")
                .arg(&script)
                .arg("--sample")
                .arg(sample_zip())
                .arg("--out")
                .arg(&work)
                .output()
                .expect("run make_models.py");
            assert!(
                out.status.success(),
                "make_models.py failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Another test binary may have finished first; either copy is complete.
            if std::fs::rename(&work, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&work);
            }
            assert!(dir.join("expected.json").exists(), "fixture missing in {}", dir.display());
        }
        let text = std::fs::read_to_string(dir.join("expected.json")).expect("read expected.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("parse expected.json");
        let logits = v["logits"]
            .as_object()
            .expect("logits object")
            .iter()
            .map(|(k, arr)| {
                let vals = arr.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect();
                (k.clone(), vals)
            })
            .collect();
        let train_correct = v["train_correct"]
            .as_object()
            .expect("train_correct object")
            .iter()
            .map(|(k, c)| (k.clone(), c.as_u64().expect("count") as usize))
            .collect();
        Fixture {
            n: v["n"].as_u64().expect("n") as usize,
            classes: v["classes"].as_u64().expect("classes") as usize,
            train_total: v["train_total"].as_u64().expect("train_total") as usize,
            logits,
            train_correct,
            dir,
        }
    })
}

/// Largest absolute difference between two equally long slices; panics, naming the value, on
/// a NaN or an infinity on either side (they agree with nothing) or a length mismatch.
#[track_caller]
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    match models::approx::max_abs_diff(got, want) {
        Ok(d) => d as f32,
        Err(e) => panic!("{e}"),
    }
}

/// Argmax labels of reference logits, and for each image whether its top-2 margin is
/// wide enough (`> 2 * tol`) that a backend within `tol` must agree on the label.
pub fn reference_labels(logits: &[f32], classes: usize, tol: f32) -> Vec<(u8, bool)> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            (inference::argmax(row) as u8, sorted[0] - sorted[1] > 2.0 * tol)
        })
        .collect()
}

/// Asserts `labels` match the reference wherever the reference is decisive, and that
/// (for these trained models) every image is decisive.
pub fn assert_labels_match(labels: &[u8], reference: &[(u8, bool)], what: &str) {
    assert_eq!(labels.len(), reference.len(), "{what}: label count");
    let decisive = reference.iter().filter(|r| r.1).count();
    assert_eq!(decisive, reference.len(), "{what}: reference has near-ties; retrain the fixture");
    for (i, (l, (r, _))) in labels.iter().zip(reference).enumerate() {
        assert_eq!(l, r, "{what}: image {i}");
    }
}

/// An HTTP client for the server tests that returns 4xx/5xx answers instead of errors.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// `infer serve ...` (the built binary) as a child process on 127.0.0.1, with its stderr
/// read by a thread; killed on drop if still running.
pub struct ServeProcess {
    child: std::process::Child,
    /// `IP:PORT` from its "listening on" line (empty for one that never got there).
    pub addr: String,
    /// Stderr lines not yet returned (the startup lines, then the rest as they come).
    lines: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    startup: Vec<String>,
}

/// How long a test waits for `infer serve` to start or to exit: far above a loaded
/// machine's seconds, so reaching it means a hang.
pub const SERVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

impl ServeProcess {
    /// `infer serve --addr 127.0.0.1:0 ARGS...` (no tracking server unless `env` names one),
    /// without waiting for it to listen.
    pub fn spawn(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> ServeProcess {
        Self::spawn_at("127.0.0.1:0", args, env)
    }

    /// As [`ServeProcess::spawn`], on `addr`.
    pub fn spawn_at(addr: &str, args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> ServeProcess {
        let mut cmd = Self::command(addr, args);
        cmd.envs(env.iter().copied());
        Self::spawn_command(cmd)
    }

    /// `infer serve --addr ADDR ARGS...` with no tracking server or token in its environment.
    pub fn command(addr: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
        cmd.arg("serve").arg("--addr").arg(addr);
        cmd.env_remove("MLFLOW_TRACKING_URI").env_remove("INFER_SERVE_TOKEN");
        for a in args {
            cmd.arg(a);
        }
        cmd
    }

    /// Spawns `cmd` (from [`ServeProcess::command`]) without waiting for it to listen.
    pub fn spawn_command(mut cmd: Command) -> ServeProcess {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn infer serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        // Joined after the exit (the pipe's EOF), so every line is in by then.
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        ServeProcess { child, addr: String::new(), lines, reader: Some(reader), startup: Vec::new() }
    }

    /// Starts `infer serve ARGS...` on a free port and waits for its "listening on" line.
    pub fn start(args: &[&dyn AsRef<std::ffi::OsStr>]) -> ServeProcess {
        Self::start_with_env(args, &[])
    }

    /// As [`ServeProcess::start`], with `env` set for the process.
    pub fn start_with_env(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> ServeProcess {
        let mut p = Self::spawn(args, env);
        let deadline = std::time::Instant::now() + SERVE_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match p.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(a) = l.strip_prefix("infer serve: listening on http://") {
                        p.addr = a.to_string();
                        p.startup.push(l);
                        return p;
                    }
                    p.startup.push(l);
                }
                // Timed out, or the pipe closed: it exited without listening.
                Err(_) => {
                    let (status, stderr) = p.wait_exit();
                    panic!("infer serve did not start ({status}):\n{stderr}");
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM (the process keeps running until it has drained).
    pub fn sigterm(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits (at most [`SERVE_LIMIT`], then kills it) for the process to exit and returns
    /// its status and its whole stderr, read to the end.
    pub fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + SERVE_LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for infer serve") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("infer serve did not exit within {SERVE_LIMIT:?}:\n{}", self.stderr_after_exit());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        (status, self.stderr_after_exit())
    }

    /// Every stderr line: the reader thread ends at the pipe's EOF, so after the join none
    /// is still on its way (collecting without the join loses the last lines by chance).
    fn stderr_after_exit(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            r.join().expect("stderr reader thread");
        }
        let mut all = std::mem::take(&mut self.startup);
        all.extend(self.lines.try_iter());
        all.join("\n")
    }

    /// Sends SIGTERM, waits for the exit, returns (exited with 0, the whole stderr).
    pub fn terminate(mut self) -> (bool, String) {
        self.sigterm();
        let (status, stderr) = self.wait_exit();
        (status.success(), format!("exit: {status}\n{stderr}"))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET url` (a server's /metrics) until one of its lines is `line`, at most
/// [`SERVE_LIMIT`]; returns the page that had it.
pub fn wait_for_line(agent: &ureq::Agent, url: &str, line: &str) -> String {
    let deadline = std::time::Instant::now() + SERVE_LIMIT;
    loop {
        let text =
            agent.get(url).call().and_then(|mut r| r.body_mut().read_to_string()).unwrap_or_else(|e| e.to_string());
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "no line `{line}` in {url} within {SERVE_LIMIT:?}:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `infer serve` of the fixture's cnn_a on tract (plus `extra` flags) whose requests wait
/// in a 10-minute batching window, under a time limit as long: a request stays in flight
/// until the test ends the wait (a full batch, a hang-up, SIGTERM's drain).
pub fn serve_holding(extra: &[&str]) -> ServeProcess {
    let model = fixture().model("cnn_a");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--model", &model, &"--backend", &"tract"];
    let hold = ["--max-delay-us", "600000000", "--batch-wait", "fixed", "--timeout-ms", "600000"];
    args.extend(hold.iter().chain(extra).map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    ServeProcess::start(&args)
}
