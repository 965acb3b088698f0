//! The server on a real socket, hammered: 10,000 requests of mixed valid and invalid
//! bodies from several client threads. Every valid one must get the labels Python
//! onnxruntime's logits give, every invalid one a 4xx with `{"error": ...}`, and the
//! server must be healthy, idle and correct afterwards.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{fixture, http_agent, reference_images, MEMBERS, N_REF};
use data::Rng;
use inference::serve::{ServeConfig, ServeError, Server};
use inference::{BackendKind, Model};
use serde_json::{json, Value};

const REQUESTS: usize = 10_000;
const CLIENTS: usize = 4;

/// A server on 127.0.0.1 (any free port) in its own runtime; `stop` shuts it down.
struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    fn start(server: Server) -> Running {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                inference::serve::serve(listener, server, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("server started");
        Running { addr, stop: Some(stop_tx), thread: Some(thread) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().expect("server thread")
    }
}

/// (status, body) of one request.
fn send(agent: &ureq::Agent, method: &str, url: &str, content_type: &str, body: &str) -> (u16, Vec<u8>) {
    let resp = match method {
        "GET" => agent.get(url).call(),
        "PUT" => agent.put(url).content_type(content_type).send(body),
        _ => agent.post(url).content_type(content_type).send(body),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_vec().unwrap())
}

/// One request of the mix and what it must get back.
struct Case {
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: String,
    /// `Ok(labels)` for a valid request, `Err(status)` for an invalid one.
    expect: Result<Vec<u8>, u16>,
}

fn expected(model: &str, images: &[usize]) -> Vec<u8> {
    let fx = fixture();
    let rows = |m: &str| -> Vec<f32> {
        images.iter().flat_map(|&i| fx.expected(m)[i * fx.classes..(i + 1) * fx.classes].to_vec()).collect()
    };
    if model == "ensemble" {
        let logits: Vec<Vec<f32>> = MEMBERS.iter().map(|m| rows(m)).collect();
        inference::majority_vote(&logits, images.len(), fx.classes)
    } else {
        inference::labels_from_logits(&rows(model), images.len(), fx.classes)
    }
}

fn make_case(rng: &mut Rng, pixels: &[Vec<u8>]) -> Case {
    let models = ["cnn_a", "cnn_b", "cnn_c", "ensemble"];
    let model = models[rng.below(4) as usize];
    let k = 1 + rng.below(4) as usize;
    let images: Vec<usize> = (0..k).map(|_| rng.below(N_REF as u64) as usize).collect();
    let raw: Vec<&Vec<u8>> = images.iter().map(|&i| &pixels[i]).collect();
    let infer = format!("/v2/models/{model}/infer");
    let valid = |path: String, content_type, body: String, model: &str| Case {
        method: "POST",
        path,
        content_type,
        body,
        expect: Ok(expected(model, &images)),
    };
    let invalid = |method, path: String, content_type, body: String, status| Case {
        method,
        path,
        content_type,
        body,
        expect: Err(status),
    };
    let fp32: Vec<f32> = raw.iter().flat_map(|r| r.iter()).map(|&p| f32::from(p) / 255.0).collect();
    let uint8: Vec<u8> = raw.iter().flat_map(|r| r.iter().copied()).collect();
    let v2 = |datatype: &str, shape: Value, data: Value| {
        json!({"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]}).to_string()
    };
    match rng.below(12) {
        0 => valid(infer, "application/json", v2("FP32", json!([k, 1, 28, 28]), json!(fp32)), model),
        1 => valid(infer, "application/json", v2("UINT8", json!([k, 784]), json!(raw)), model),
        2 => valid("/predict".into(), "application/json", json!({"pixels": raw}).to_string(), "ensemble"),
        3 => {
            let csv: String =
                raw.iter().map(|r| r.iter().map(u8::to_string).collect::<Vec<_>>().join(",") + "\n").collect();
            valid("/predict".into(), "text/csv", csv, "ensemble")
        }
        4 => invalid("POST", infer, "application/json", v2("UINT8", json!([k, 783]), json!(uint8)), 400),
        5 => {
            let mut bad = uint8.clone().into_iter().map(u32::from).collect::<Vec<_>>();
            let at = rng.below(bad.len() as u64) as usize;
            bad[at] = 256 + rng.below(1000) as u32;
            invalid("POST", infer, "application/json", v2("UINT8", json!([k, 784]), json!(bad)), 400)
        }
        6 => {
            // Valid JSON cut short at a random place.
            let body = v2("FP32", json!([k, 784]), json!(fp32));
            let cut = 1 + rng.below(body.len() as u64 - 1) as usize;
            invalid("POST", infer, "application/json", body[..cut].to_string(), 400)
        }
        7 => invalid(
            "POST",
            "/v2/models/resnet_missing/infer".into(),
            "application/json",
            v2("UINT8", json!([k, 784]), json!(uint8)),
            404,
        ),
        8 => invalid("PUT", infer, "application/json", "{}".into(), 405),
        9 => invalid("POST", "/predict".into(), "application/x-www-form-urlencoded", "pixels=1".into(), 415),
        10 => {
            let mut row: Vec<String> = raw[0].iter().map(u8::to_string).collect();
            row[rng.below(784) as usize] = "-1".into();
            invalid("POST", "/predict".into(), "text/csv", row.join(",") + "\n", 400)
        }
        _ => invalid("POST", infer, "application/json", v2("FP32", json!([k, 784]), json!(vec![1.5f32; k * 784])), 400),
    }
}

#[test]
fn ten_thousand_mixed_requests_then_still_healthy() {
    let fx = fixture();
    let models =
        MEMBERS.iter().map(|m| (m.to_string(), Model::load(&fx.model(m), BackendKind::Ort, 1).unwrap())).collect();
    let config = ServeConfig { max_delay: Duration::from_micros(500), ..ServeConfig::default() };
    let running = Running::start(Server::new(models, config).unwrap());
    let data = reference_images();
    let pixels: Vec<Vec<u8>> = (0..N_REF).map(|i| data.image(i).to_vec()).collect();

    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (running, pixels) = (&running, &pixels);
                s.spawn(move || {
                    let agent = http_agent();
                    let mut rng = Rng::new(1000 + c as u64);
                    let (mut valid, mut invalid) = (0, 0);
                    for i in 0..REQUESTS / CLIENTS {
                        let case = make_case(&mut rng, pixels);
                        let url = running.url(&case.path);
                        let (status, body) = send(&agent, case.method, &url, case.content_type, &case.body);
                        let text = String::from_utf8_lossy(&body);
                        let what = format!("client {c} request {i}: {} {}", case.method, case.path);
                        let v: Value =
                            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
                        match case.expect {
                            Ok(labels) => {
                                assert_eq!(status, 200, "{what}: {text}");
                                let got: Vec<u8> = match v.get("labels") {
                                    Some(l) => {
                                        l.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect()
                                    }
                                    None => v["outputs"][0]["data"]
                                        .as_array()
                                        .unwrap()
                                        .iter()
                                        .map(|x| x.as_u64().unwrap() as u8)
                                        .collect(),
                                };
                                assert_eq!(got, labels, "{what}");
                                valid += 1;
                            }
                            Err(want) => {
                                assert_eq!(status, want, "{what}: {text}");
                                assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {text}");
                                invalid += 1;
                            }
                        }
                    }
                    (valid, invalid)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let valid: usize = results.iter().map(|r| r.0).sum();
    let invalid: usize = results.iter().map(|r| r.1).sum();
    assert_eq!(valid + invalid, REQUESTS);
    assert!(valid > REQUESTS / 4 && invalid > REQUESTS / 4, "{valid} valid, {invalid} invalid");

    // Healthy, idle and still right.
    let agent = http_agent();
    assert_eq!(send(&agent, "GET", &running.url("/v2/health/ready"), "", "").0, 200);
    let (status, body) = send(&agent, "GET", &running.url("/metrics"), "", "");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(body).unwrap();
    assert!(metrics.lines().any(|l| l == "digits_queue_depth 0"), "{metrics}");
    let answered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("digits_http_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(answered as usize, REQUESTS + 1, "every request counted once (plus the health check)");
    let all: Vec<usize> = (0..N_REF).collect();
    let body = json!({"pixels": pixels}).to_string();
    let (status, body) = send(&agent, "POST", &running.url("/predict"), "application/json", &body);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let labels: Vec<u8> = v["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect();
    assert_eq!(labels, expected("ensemble", &all));
    running.stop().expect("clean shutdown");
}
