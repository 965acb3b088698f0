//! `infer serve` as a process, driven by real clients: NVIDIA's `tritonclient[http]`
//! (the same labels as offline `infer`), SIGTERM while a request is in flight (answered,
//! then a clean exit), and the draw-a-digit page in headless Chromium (a stroke drawn with
//! the mouse, Predict pressed, the label read back and checked against the models); a
//! `models:/NAME@alias` URI served under NAME.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fixture, http_agent, sample_zip, venv_python, ServeProcess, MEMBERS};
use serde_json::{json, Value};
use tracking::{FileStore, ModelRegistry, Tracker};

fn post_json(agent: &ureq::Agent, url: &str, body: &Value) -> (u16, Value) {
    let mut r = agent.post(url).send_json(body).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    (r.status().as_u16(), r.body_mut().read_json().unwrap())
}

/// Offline `infer` labels for the sample's test.csv.
fn offline_labels(args: &[&dyn AsRef<std::ffi::OsStr>], dir: &Path) -> Vec<u8> {
    let sub = dir.join("offline.csv");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
    for a in args {
        cmd.arg(a);
    }
    let o = cmd.arg(sample_zip()).arg("-o").arg(&sub).output().unwrap();
    assert!(o.status.success(), "offline infer failed: {}", String::from_utf8_lossy(&o.stderr));
    data::read_submission(&sub).unwrap().into_iter().map(|(_, l)| l).collect()
}

#[test]
fn tritonclient_gets_the_same_labels_as_offline_infer() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let members = MEMBERS.join(",");
    let common: [&dyn AsRef<std::ffi::OsStr>; 6] = [&"--models-dir", &fx.dir, &"--backend", &"ort", &"--threads", &"2"];
    let server = ServeProcess::start(&[&"--ensemble", &members, &common[0], &common[1], &common[2], &common[3]]);

    let out = tmp.path().join("triton.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("triton_client.py");
    let o = Command::new(venv_python())
        .arg("-W")
        .arg("ignore")
        .arg(&script)
        .arg("--url")
        .arg(&server.addr)
        .arg("--sample")
        .arg(sample_zip())
        .arg("--models")
        .arg(&members)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "triton_client.py failed (is tritonclient[http] installed? run scripts/setup.sh):\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let served = |name: &str| -> Vec<u8> {
        result["labels"][name].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect()
    };

    let ensemble =
        offline_labels(&[&"--ensemble", &members, &common[0], &common[1], &common[2], &common[3]], tmp.path());
    assert_eq!(ensemble.len(), 1000);
    assert_eq!(served("ensemble"), ensemble, "ensemble: tritonclient vs offline infer");
    for m in MEMBERS {
        let offline = offline_labels(&[&"--model", &fx.model(m), &common[2], &common[3]], tmp.path());
        assert_eq!(served(m), offline, "{m}: tritonclient vs offline infer");
    }

    // prometheus_client parsed our exposition into the families we promise.
    let families = &result["metric_families"];
    for (name, kind) in [
        ("digits_http_requests", "counter"),
        ("digits_http_request_duration_seconds", "histogram"),
        ("digits_batch_size", "histogram"),
        ("digits_model_inference_seconds", "histogram"),
        ("digits_queue_depth", "gauge"),
        ("digits_model_queue_depth", "gauge"),
    ] {
        assert_eq!(families[name], kind, "{name} in {families}");
    }
    let (clean, _) = server.terminate();
    assert!(clean);
}

#[test]
fn registry_uris_are_served_under_the_registered_name() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // A file-store registry: cnn_b logged as the exporter logs a model, version 1, alias champion.
    let store = FileStore::new(tmp.path().join("mlruns")).unwrap();
    let exp = store.get_or_create_experiment("serve-test").unwrap();
    let run = store.create_run(&exp, "cnn_b", &[]).unwrap();
    run.log_artifact_bytes("model.onnx", &std::fs::read(fx.model("cnn_b")).unwrap(), Some("model")).unwrap();
    store.create_registered_model("digits").unwrap();
    let source = format!("{}/model", run.info().unwrap().artifact_uri);
    store.create_model_version("digits", &source, Some(run.run_id())).unwrap();
    store.set_alias("digits", "champion", 1).unwrap();
    let env = [("MLFLOW_TRACKING_URI", store.uri())];

    let server = ServeProcess::start_with_env(&[&"--model", &"models:/digits@champion", &"--backend", &"tract"], &env);
    let agent = http_agent();
    assert_eq!(agent.get(&server.url("/v2/models/digits/ready")).call().unwrap().status().as_u16(), 200);
    let images: Vec<Vec<u8>> = (0..8).map(|i| common::reference_images().image(i).to_vec()).collect();
    let (status, body) = post_json(&agent, &server.url("/predict"), &json!({ "pixels": images }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["labels"], json!(inference::labels_from_logits(&fx.expected("cnn_b")[..80], 8, 10)));
    drop(agent);
    let (clean, stderr) = server.terminate();
    assert!(clean, "{stderr}");

    // An alias the registry does not have: a clear error before anything listens.
    let out = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(["serve", "--addr", "127.0.0.1:0", "--model", "models:/digits@staging"])
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("staging") && !stderr.contains("listening"), "{stderr}");
}

#[test]
fn sigterm_answers_the_request_in_flight_then_exits_cleanly() {
    let fx = fixture();
    // The request would wait 10 min in the batching window: it is in flight when SIGTERM
    // comes, and the drain runs it at once rather than waiting the window out.
    let server = common::serve_holding(&[]);
    let image: Vec<u8> = common::reference_images().image(5).to_vec();
    let url = server.url("/predict");
    let in_flight = std::thread::spawn(move || post_json(&http_agent(), &url, &json!({"pixels": [image]})));
    let agent = http_agent();
    common::wait_for_line(&agent, &server.url("/metrics"), "digits_queue_depth 1");
    drop(agent); // an idle keep-alive connection would be closed by the drain anyway
    let (clean, stderr) = server.terminate();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let want = inference::labels_from_logits(&fx.expected("cnn_a")[50..60], 1, 10);
    assert_eq!(body["labels"], json!(want));
    assert!(clean, "exit status after SIGTERM; stderr:\n{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
}

fn find(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A WebDriver session on Debian's chromedriver + headless Chromium.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let hint = "run scripts/setup.sh (it installs Debian's chromium and chromium-driver)";
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])
            .unwrap_or_else(|| panic!("chromium is not installed: {hint}"));
        let chromedriver =
            find(&["/usr/bin/chromedriver"]).unwrap_or_else(|| panic!("chromedriver is not installed: {hint}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let agent = http_agent();
        let mut tries = 0;
        while agent.get(&format!("{base}/status")).call().is_err() {
            tries += 1;
            assert!(tries < 300, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1000,800",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let (status, v) = post_json(&agent, &format!("{base}/session"), &caps);
        assert_eq!(status, 200, "new session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser { driver, base, session, agent, _profile: profile }
    }

    fn cmd(&self, path: &str, body: Value) -> Value {
        let (status, v) = post_json(&self.agent, &format!("{}/session/{}{path}", self.base, self.session), &body);
        assert_eq!(status, 200, "{path}: {v}");
        v["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd("/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    fn script(&self, js: &str) -> Value {
        self.cmd("/execute/sync", json!({"script": js, "args": []}))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn browser_draws_a_digit_and_reads_the_ensembles_answer() {
    let fx = fixture();
    let members = MEMBERS.join(",");
    let server = ServeProcess::start(&[
        &"--ensemble",
        &members,
        &"--models-dir",
        &fx.dir,
        &"--backend",
        &"tract",
        &"--threads",
        &"1",
    ]);
    let browser = Browser::start();
    browser.cmd("/url", json!({"url": server.url("/")}));
    assert_eq!(browser.script("return document.title"), "Digit Recognizer");

    // A "7": a bar across the top, then a long diagonal down (offsets from the canvas centre).
    let pad = browser.element("#pad");
    let origin = json!({ELEMENT: pad});
    let mut moves = vec![json!({"type": "pointerMove", "duration": 0, "origin": origin, "x": -60, "y": -80})];
    moves.push(json!({"type": "pointerDown", "button": 0}));
    for (x, y) in [(-20, -80), (20, -80), (60, -80), (40, -30), (20, 20), (0, 70), (-10, 95)] {
        moves.push(json!({"type": "pointerMove", "duration": 40, "origin": origin, "x": x, "y": y}));
    }
    moves.push(json!({"type": "pointerUp", "button": 0}));
    browser.cmd(
        "/actions",
        json!({"actions": [{"type": "pointer", "id": "mouse",
        "parameters": {"pointerType": "mouse"}, "actions": moves}]}),
    );
    let predict = browser.element("#predict");
    browser.cmd(&format!("/element/{predict}/click"), json!({}));

    let mut label = String::new();
    for _ in 0..200 {
        label = browser.script("return document.getElementById('label').textContent").as_str().unwrap().to_string();
        let error = browser.script("return document.getElementById('error').textContent");
        assert_eq!(error, "", "the page shows an error");
        if !label.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!label.is_empty(), "no label appeared");

    // What the page sent, predicted here with the same models: the page shows their answer.
    let pixels: Vec<u8> = browser
        .script("return window.lastPixels")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(pixels.len(), 784);
    assert!(pixels.iter().filter(|&&p| p > 0).count() > 30, "the stroke left almost no ink: {pixels:?}");
    let input: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
    let logits: Vec<Vec<f32>> = MEMBERS
        .iter()
        .map(|m| {
            inference::Model::load(&fx.model(m), inference::BackendKind::Tract, 1).unwrap().run(&input, 1).unwrap()
        })
        .collect();
    let want = inference::majority_vote(&logits, 1, 10)[0];
    assert_eq!(label, want.to_string(), "page label vs the ensemble on the pixels it sent");
    let votes = browser.script("return Array.from(document.querySelectorAll('#votes li')).map(li => li.textContent)");
    let expected_votes: Vec<String> =
        MEMBERS.iter().zip(&logits).map(|(m, l)| format!("{m}: {}", inference::argmax(l))).collect();
    assert_eq!(votes, json!(expected_votes));
    assert_eq!(browser.script("return document.querySelectorAll('#bars .bar').length"), 10);
}
