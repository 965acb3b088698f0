//! Load generator for `infer serve`: single-image Open Inference Protocol requests from
//! N concurrent clients (one thread and one keep-alive connection each), for a fixed
//! time per concurrency level; prints throughput and latency percentiles.
//!
//!   cargo run --release -p inference --example loadgen -- --url http://127.0.0.1:8000 \
//!       --model resnet18 --concurrency 1,16,64 --seconds 10
//!
//! Images are the rows of a Kaggle test.csv (default: the committed sample), sent as
//! UINT8 [1,784] JSON. Every answer must be 200 with one label; anything else is counted
//! as an error and printed once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Cli {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model to call (a member name or `ensemble`).
    #[arg(long, default_value = "ensemble")]
    model: String,
    /// Concurrency levels to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Seconds of measurement per level (after a one-second warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Images to send: a test.csv, or a Kaggle zip / folder holding one.
    #[arg(long, default_value = "sample/digit-recognizer.zip")]
    data: PathBuf,
    /// Label for the rows of the table (e.g. "batching on").
    #[arg(long, default_value = "")]
    label: String,
    /// Also append one JSON line per level to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Level {
    concurrency: usize,
    ok: usize,
    errors: usize,
    seconds: f64,
    /// Sorted latencies of the successful requests, milliseconds.
    latencies: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn run_level(cli: &Cli, bodies: &Arc<Vec<String>>, concurrency: usize) -> Level {
    let url = format!("{}/v2/models/{}/infer", cli.url.trim_end_matches('/'), cli.model);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..concurrency)
        .map(|t| {
            let (url, bodies, measuring, stop) =
                (url.clone(), Arc::clone(bodies), Arc::clone(&measuring), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .new_agent();
                let (mut lat, mut errors, mut first_error) = (Vec::new(), 0usize, None);
                let mut i = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let body = &bodies[i % bodies.len()];
                    i += 1;
                    let t0 = Instant::now();
                    let r = agent.post(&url).content_type("application/json").send(body.as_str());
                    let ok = match r {
                        Ok(mut resp) => {
                            let status = resp.status().as_u16();
                            let text = resp.body_mut().read_to_string().unwrap_or_default();
                            if status == 200 && text.contains("\"label\"") {
                                true
                            } else {
                                first_error.get_or_insert(format!("{status}: {text}"));
                                false
                            }
                        }
                        Err(e) => {
                            first_error.get_or_insert(e.to_string());
                            false
                        }
                    };
                    if measuring.load(Ordering::Relaxed) {
                        if ok {
                            lat.push(t0.elapsed().as_secs_f64() * 1e3);
                        } else {
                            errors += 1;
                        }
                    }
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(cli.seconds));
    measuring.store(false, Ordering::Relaxed);
    let seconds = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (lat, e, first) = h.join().expect("client thread");
        latencies.extend(lat);
        errors += e;
        if let Some(msg) = first {
            eprintln!("loadgen: c={concurrency}: first error: {msg}");
        }
    }
    latencies.sort_by(f64::total_cmp);
    Level { concurrency, ok: latencies.len(), errors, seconds, latencies }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.concurrency.contains(&0) {
        bail!("--concurrency levels must be at least 1");
    }
    let split = data::Split::Test;
    let images = data::load(&cli.data, split).with_context(|| format!("reading {}", cli.data.display()))?;
    let bodies: Vec<String> = (0..images.len().min(1000))
        .map(|i| {
            json!({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": images.image(i)}],
                   "outputs": [{"name": "label"}]})
            .to_string()
        })
        .collect();
    let bodies = Arc::new(bodies);
    println!("| mode | concurrency | requests | errors | img/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &c in &cli.concurrency {
        let l = run_level(&cli, &bodies, c);
        let rate = l.ok as f64 / l.seconds;
        let (p50, p99) = (percentile(&l.latencies, 50.0), percentile(&l.latencies, 99.0));
        println!("| {} | {} | {} | {} | {rate:.0} | {p50:.1} | {p99:.1} |", cli.label, l.concurrency, l.ok, l.errors);
        if let Some(path) = &cli.json {
            use std::io::Write;
            let line = json!({"mode": cli.label, "concurrency": c, "requests": l.ok, "errors": l.errors,
                              "img_per_s": rate, "p50_ms": p50, "p99_ms": p99});
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
