//! `infer serve` as a process (the built binary, HTTP over 127.0.0.1): what its flags and
//! environment promise. `--token` and `INFER_SERVE_TOKEN` guard every predicting route
//! while the health checks stay open; a port already taken is one clear error line and a
//! failing exit; `--max-body-bytes` is exact (413 one byte over); SIGTERM answers every
//! request in flight, then exits 0; a full `--queue` answers 503 + Retry-After, and the
//! server takes work again once places free up.
//!
//! Nothing here synchronises by sleeping: requests are held in flight by a 10-minute
//! batching window (or by their client), and the tests poll /metrics, with a bound, until
//! the server has them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{fixture, http_agent, reference_images, serve_holding, wait_for_line, ServeProcess};
use serde_json::{json, Value};

fn pixels(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    let images = reference_images();
    range.map(|i| images.image(i).to_vec()).collect()
}

fn predict_body(range: std::ops::Range<usize>) -> String {
    json!({ "pixels": pixels(range) }).to_string()
}

fn v2_body(range: std::ops::Range<usize>) -> String {
    let images = pixels(range);
    json!({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [images.len(), 784], "data": images}]})
        .to_string()
}

/// cnn_a's labels (from Python onnxruntime's logits) for reference images `range`.
fn labels_a(range: std::ops::Range<usize>) -> Vec<u8> {
    let n = range.len();
    inference::labels_from_logits(&fixture().expected("cnn_a")[range.start * 10..range.end * 10], n, 10)
}

/// An answer: status, the headers that matter here, and the body as JSON.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
    body: Value,
}

fn post(agent: &ureq::Agent, url: &str, auth: Option<&str>, content_type: &str, body: &str) -> Reply {
    let mut req = agent.post(url).content_type(content_type);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let mut r = req.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (retry_after, www_authenticate) = (header("retry-after"), header("www-authenticate"));
    let text = r.body_mut().read_to_string().unwrap_or_else(|e| panic!("POST {url}: reading the answer: {e}"));
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: not JSON ({e}): {text}"));
    Reply { status: r.status().as_u16(), retry_after, www_authenticate, body }
}

fn get_status(agent: &ureq::Agent, url: &str, auth: Option<&str>) -> u16 {
    let mut req = agent.get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.call().unwrap_or_else(|e| panic!("GET {url}: {e}")).status().as_u16()
}

fn labels(reply: &Reply) -> Vec<u8> {
    let v = &reply.body;
    let labels = match v.get("outputs") {
        Some(outputs) => &outputs.as_array().unwrap().iter().find(|o| o["name"] == "label").unwrap()["data"],
        None => &v["labels"],
    };
    labels.as_array().unwrap_or_else(|| panic!("no labels in {v}")).iter().map(|l| l.as_u64().unwrap() as u8).collect()
}

/// A request written whole on its own connection (`Connection: close`); its answer is
/// read later with [`Held::answer`], and dropping it hangs up on the server.
struct Held(TcpStream);

impl Held {
    fn send(addr: &str, path: &str, body: &str) -> Held {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(common::SERVE_LIMIT)).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).unwrap();
        Held(s)
    }

    /// (status, body) once the server has answered and closed.
    fn answer(mut self) -> (u16, String) {
        let mut raw = String::new();
        self.0.read_to_string(&mut raw).unwrap_or_else(|e| panic!("reading a held answer: {e} (so far: {raw:?})"));
        let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {raw:?}"));
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (status, body)
    }
}

/// The predicting routes of a server of cnn_a and cnn_b, each with a body of 2 images.
fn predicting_routes() -> Vec<(&'static str, &'static str, String)> {
    let (v2, predict, csv) = (v2_body(0..2), predict_body(0..2), csv_rows(0..2));
    vec![
        ("/v2/models/cnn_a/infer", "application/json", v2.clone()),
        ("/v2/models/cnn_b/infer", "application/json", v2.clone()),
        ("/v2/models/ensemble/infer", "application/json", v2.clone()),
        ("/v2/models/cnn_a/versions/1/infer", "application/json", v2.clone()),
        ("/v2/models/ensemble/versions/1/infer", "application/json", v2),
        ("/predict", "application/json", predict.clone()),
        ("/predict?detail=true", "application/json", predict),
        ("/predict", "text/csv", csv),
    ]
}

/// Kaggle test.csv rows (header included) for reference images `range`.
fn csv_rows(range: std::ops::Range<usize>) -> String {
    let header: Vec<String> = (0..784).map(|i| format!("pixel{i}")).collect();
    let mut out = header.join(",") + "\n";
    for p in pixels(range) {
        out += &(p.iter().map(u8::to_string).collect::<Vec<_>>().join(",") + "\n");
    }
    out
}

/// Every predicting route refuses a missing or wrong token with 401 and answers the right
/// one; the health checks (and the page) need none; the rest of the API is guarded too.
fn check_token_guard(server: &ServeProcess, token: &str, refused: &[&str]) {
    let agent = http_agent();
    let right = format!("Bearer {token}");
    for (path, content_type, body) in predicting_routes() {
        let url = server.url(path);
        for auth in [None, Some("Bearer wrong"), Some(token), Some(&format!("Bearer {token}x"))]
            .into_iter()
            .chain(refused.iter().map(|r| Some(*r)))
        {
            let r = post(&agent, &url, auth, content_type, &body);
            assert_eq!(r.status, 401, "{path} with {auth:?} ({content_type}): {r:?}");
            assert!(r.body["error"].as_str().unwrap_or("").contains("bearer token"), "{path}: {r:?}");
            assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"), "{path}");
        }
        let r = post(&agent, &url, Some(&right), content_type, &body);
        assert_eq!(r.status, 200, "{path} with the token ({content_type}): {r:?}");
        if path.contains("cnn_a") {
            assert_eq!(labels(&r), labels_a(0..2), "{path}");
        }
    }
    for open in ["/v2/health/live", "/v2/health/ready", "/"] {
        assert_eq!(get_status(&agent, &server.url(open), None), 200, "{open} without a token");
    }
    for guarded in ["/v2", "/metrics", "/v2/models/cnn_a", "/v2/models/ensemble/ready"] {
        assert_eq!(get_status(&agent, &server.url(guarded), None), 401, "{guarded} without a token");
        assert_eq!(get_status(&agent, &server.url(guarded), Some(&right)), 200, "{guarded} with the token");
    }
}

#[test]
fn token_from_the_flag_or_the_environment_guards_every_predicting_route() {
    let fx = fixture();
    let start = |token: Option<&str>, env: &[(&str, &str)]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"--ensemble", &"cnn_a,cnn_b", &"--models-dir", &fx.dir, &"--backend", &"tract", &"--threads", &"1"];
        let flag = token.map(|t| ["--token", t]);
        if let Some([f, t]) = &flag {
            args.extend([f as &dyn AsRef<std::ffi::OsStr>, t]);
        }
        ServeProcess::start_with_env(&args, env)
    };

    let by_flag = start(Some("fl4g-t0ken"), &[]);
    check_token_guard(&by_flag, "fl4g-t0ken", &[]);
    let (clean, stderr) = by_flag.terminate();
    assert!(clean, "{stderr}");

    // The environment variable keeps the token out of `ps`; nothing prints it.
    let by_env = start(None, &[("INFER_SERVE_TOKEN", "env-t0ken")]);
    check_token_guard(&by_env, "env-t0ken", &[]);
    let (clean, stderr) = by_env.terminate();
    assert!(clean && !stderr.contains("env-t0ken"), "{stderr}");

    // Both given: the flag wins, the environment's token is just another wrong one.
    let both = start(Some("fl4g-t0ken"), &[("INFER_SERVE_TOKEN", "env-t0ken")]);
    check_token_guard(&both, "fl4g-t0ken", &["Bearer env-t0ken"]);
    drop(both);
}

#[test]
fn a_port_in_use_is_one_clear_error_line_and_a_failing_exit() {
    let fx = fixture();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let server = ServeProcess::spawn_at(&addr, &[&"--model", &fx.model("cnn_a"), &"--backend", &"tract"], &[]);
    let line = refused_at_startup(server);
    assert!(line.contains(&addr) && line.contains("already in use") && line.contains("--addr"), "{line}");
    drop(taken);
}

/// Waits for a server that must not start: exit status 1, its last stderr line the one
/// error line, nothing listening. Returns that line.
fn refused_at_startup(mut server: ServeProcess) -> String {
    let (status, stderr) = server.wait_exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    let line = errors[0];
    assert!(line.starts_with("infer serve: error: "), "{line}");
    assert_eq!(stderr.lines().last(), Some(line), "the error is the last word:\n{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    line.to_string()
}

#[test]
fn a_token_given_empty_or_not_utf8_is_refused_not_ignored() {
    use std::os::unix::ffi::OsStrExt;
    let fx = fixture();
    let model: [&dyn AsRef<std::ffi::OsStr>; 4] = [&"--model", &fx.model("cnn_a"), &"--backend", &"tract"];
    let with_env = |value: &std::ffi::OsStr| {
        let mut cmd = ServeProcess::command("127.0.0.1:0", &model);
        cmd.env("INFER_SERVE_TOKEN", value);
        ServeProcess::spawn_command(cmd)
    };
    // Each of these would otherwise serve every route without a token.
    for (flag, want) in [("", "--token is empty"), ("  ", "--token is empty")] {
        let line = refused_at_startup(ServeProcess::spawn(
            &[&model[0], &model[1], &model[2], &model[3], &"--token", &flag],
            &[],
        ));
        assert!(line.contains(want), "--token {flag:?}: {line}");
    }
    let line = refused_at_startup(with_env("".as_ref()));
    assert!(line.contains("INFER_SERVE_TOKEN is empty"), "{line}");
    let line = refused_at_startup(with_env(std::ffi::OsStr::from_bytes(b"t0ken\xff")));
    assert!(line.contains("INFER_SERVE_TOKEN is not valid UTF-8"), "{line}");

    // A token read from a file keeps its newline; clients cannot send one, so it is trimmed.
    let server = ServeProcess::start_with_env(&model, &[("INFER_SERVE_TOKEN", "nl-t0ken\n")]);
    let agent = http_agent();
    let url = server.url("/predict");
    assert_eq!(post(&agent, &url, None, "application/json", &predict_body(0..1)).status, 401);
    let r = post(&agent, &url, Some("Bearer nl-t0ken"), "application/json", &predict_body(0..1));
    assert_eq!((r.status, labels(&r)), (200, labels_a(0..1)), "{r:?}");
}

#[test]
fn max_body_bytes_answers_413_one_byte_over_and_the_server_goes_on() {
    let fx = fixture();
    // Both routes' one-image bodies fit; pad them to the limit exactly, and one over.
    let bodies = [("/predict", predict_body(3..4)), ("/v2/models/cnn_a/infer", v2_body(3..4))];
    let limit = bodies.iter().map(|(_, b)| b.len()).max().unwrap() + 16;
    let limit_arg = limit.to_string();
    let server =
        ServeProcess::start(&[&"--model", &fx.model("cnn_a"), &"--backend", &"tract", &"--max-body-bytes", &limit_arg]);
    let agent = http_agent();
    for (path, body) in &bodies {
        let url = server.url(path);
        // Trailing whitespace is valid JSON: the sizes differ, the content does not.
        let at = format!("{body:<limit$}");
        let over = format!("{body:<width$}", width = limit + 1);
        let r = post(&agent, &url, None, "application/json", &over);
        assert_eq!(r.status, 413, "{path}, {} bytes over a {limit} limit: {r:?}", over.len());
        assert!(r.body["error"].as_str().unwrap().contains(&format!("larger than {limit} bytes")), "{r:?}");
        let r = post(&agent, &url, None, "application/json", &at);
        assert_eq!(r.status, 200, "{path}, {} bytes at a {limit} limit: {r:?}", at.len());
        assert_eq!(labels(&r), labels_a(3..4), "{path}");
    }
    // Chunked, so no Content-Length announces it: still cut at the limit.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(common::SERVE_LIMIT)).unwrap();
    let body = format!("{:<width$}", bodies[0].1, width = limit + 1);
    let (a, b) = body.split_at(limit / 2);
    let chunked = format!(
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(chunked.as_bytes()).unwrap();
    let (status, answer) = Held(s).answer();
    assert_eq!(status, 413, "chunked, one byte over: {answer}");
    assert_eq!(get_status(&agent, &server.url("/v2/health/ready"), None), 200);
    let (clean, stderr) = server.terminate();
    assert!(clean, "{stderr}");
}

#[test]
fn sigterm_answers_every_request_in_flight_then_exits_0() {
    let server = serve_holding(&[]);
    // Six requests of 1-3 images on both routes, each on its own connection, all waiting
    // in the batching window when SIGTERM comes.
    let ranges = [0..1, 1..3, 3..6, 6..7, 7..9, 9..12];
    let in_flight: Vec<_> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (path, body) = if i % 2 == 0 {
                ("/predict", predict_body(r.clone()))
            } else {
                ("/v2/models/cnn_a/infer", v2_body(r.clone()))
            };
            let url = server.url(path);
            std::thread::spawn(move || post(&http_agent(), &url, None, "application/json", &body))
        })
        .collect();
    let agent = http_agent();
    wait_for_line(&agent, &server.url("/metrics"), &format!("digits_queue_depth {}", ranges.len()));
    drop(agent);
    let (clean, stderr) = server.terminate();
    for (r, t) in ranges.iter().zip(in_flight) {
        let reply =
            t.join().unwrap_or_else(|_| panic!("the request for images {r:?} was lost; server stderr:\n{stderr}"));
        assert_eq!(reply.status, 200, "images {r:?}: {reply:?}");
        assert_eq!(labels(&reply), labels_a(r.clone()), "images {r:?}");
    }
    assert!(clean, "exit after SIGTERM:\n{stderr}");
    assert!(stderr.lines().any(|l| l == "infer serve: drained, exiting"), "{stderr}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after_then_takes_work_again() {
    // Two places; a batch runs when it holds 4 images (or after 10 minutes).
    let server = serve_holding(&["--queue", "2", "--max-batch", "4"]);
    let agent = http_agent();
    let metrics = server.url("/metrics");
    let first = Held::send(&server.addr, "/predict", &predict_body(0..1));
    let second = Held::send(&server.addr, "/predict", &predict_body(1..2));
    wait_for_line(&agent, &metrics, "digits_queue_depth 2");

    // A burst from 8 clients at once: every one refused, told when to come back.
    let url = server.url("/predict");
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || post(&http_agent(), &url, None, "application/json", &predict_body(i..i + 1)))
        })
        .collect();
    for t in burst {
        let r = t.join().unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.retry_after.as_deref(), Some("1"), "{r:?}");
        assert!(r.body["error"].as_str().unwrap().contains("limit 2"), "{r:?}");
    }
    let text = wait_for_line(&agent, &metrics, "digits_queue_depth 2");
    assert!(text.contains("digits_http_requests_total{route=\"/predict\",status=\"503\"} 8"), "{text}");

    // The first client hangs up: its place frees. The next request (2 images) fills the
    // batch with the second client's, so both are answered.
    drop(first);
    wait_for_line(&agent, &metrics, "digits_queue_depth 1");
    let r = post(&agent, &url, None, "application/json", &predict_body(2..4));
    assert_eq!((r.status, labels(&r)), (200, labels_a(2..4)), "{r:?}");
    let (status, body) = second.answer();
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["labels"], json!(labels_a(1..2)));
    wait_for_line(&agent, &metrics, "digits_queue_depth 0");

    // Recovered: full batches run at once, one after another.
    for start in [4, 8, 12] {
        let r = post(&agent, &url, None, "application/json", &predict_body(start..start + 4));
        assert_eq!((r.status, labels(&r)), (200, labels_a(start..start + 4)), "{r:?}");
    }
    let (clean, stderr) = server.terminate();
    assert!(clean, "{stderr}");
}
