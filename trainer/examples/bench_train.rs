//! Training throughput of our libtorch lowering, for scripts/bench_train.sh (compare with
//! scripts/bench_train_torch.py): Adam steps on one fixed random batch, after warm-up steps.
//!
//! `cargo run --release -p trainer --example bench_train -- ARCH [BATCH=64] [THREADS=2] [STEPS=30] [WARMUP=3]`
//! prints `img/s <value>`.

use std::time::Instant;

use anyhow::{bail, Context};
use models::{Arch, ModelConfig};
use tch::{Device, Kind, Tensor};
use trainer::train::{adam, train_step};
use trainer::Model;

fn arg(args: &[String], i: usize, default: usize, what: &str) -> anyhow::Result<usize> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().with_context(|| format!("{what} must be a positive integer, got {s:?}")),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(arch) = args.first() else { bail!("usage: bench_train ARCH [BATCH] [THREADS] [STEPS] [WARMUP]") };
    let arch: Arch = arch.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let batch = arg(&args, 1, 64, "BATCH")?;
    let threads = arg(&args, 2, 2, "THREADS")?;
    let steps = arg(&args, 3, 30, "STEPS")?;
    let warmup = arg(&args, 4, 3, "WARMUP")?;
    if batch < 2 || threads == 0 || steps == 0 {
        bail!("BATCH must be >= 2 (BatchNorm), THREADS and STEPS >= 1");
    }
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let model = Model::new(&ModelConfig::new(arch), Device::Cpu)?;
    let x = Tensor::rand([batch as i64, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [batch as i64], (Kind::Int64, Device::Cpu));
    let mut opt = adam(&model.net, 1e-3)?;
    for _ in 0..warmup {
        train_step(&model.net, &mut opt, &x, &y)?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        train_step(&model.net, &mut opt, &x, &y)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("img/s {:.1}", (steps * batch) as f64 / secs);
    Ok(())
}
