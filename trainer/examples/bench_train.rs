//! Training throughput of our libtorch lowering, for scripts/bench_train.sh (compare with
//! scripts/bench_train_torch.py): Adam steps on one fixed random batch, after warm-up steps.
//!
//! `cargo run --release -p trainer --example bench_train -- ARCH [BATCH=64] [THREADS=2] [STEPS=30] [WARMUP=3] [AUGMENT=0]`
//! prints `img/s <value>`. AUGMENT=1 applies the strong recipe's random affine augmentation to
//! the batch before every step (as the trainer does), AUGMENT=2 adds `--elastic 36
//! --elastic-sigma 6` to it. Environment: `DEVICE=cuda` trains on the GPU (default cpu),
//! `AMP=1` under bf16 autocast (`--amp`); scripts/bench_train_torch.py reads the same two.
//! `CROP=0` computes every kernel tap, as PyTorch does (no [`trainer::Net::set_kernel_crops`]);
//! `SKIP=0` has Adam update the taps a cropped kernel never reads too (no
//! [`trainer::optim::Optimizer::skip_dead_taps`]). `MEMORY_FORMAT` as the trainer's
//! `--memory-format` (auto, contiguous, channels-last).

use std::time::Instant;

use anyhow::{bail, Context};
use models::{Arch, ModelConfig};
use tch::{Kind, Tensor};
use trainer::augment::Augment;
use trainer::train::{adam, reuse_freed_memory, train_step_with};
use trainer::Model;
use trainer::{resolve_device, DeviceChoice, MemoryFormat};

fn arg(args: &[String], i: usize, default: usize, what: &str) -> anyhow::Result<usize> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().with_context(|| format!("{what} must be a positive integer, got {s:?}")),
    }
}

/// `name` unset or anything but "0": on.
fn env_flag(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v != "0")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(arch) = args.first() else { bail!("usage: bench_train ARCH [BATCH] [THREADS] [STEPS] [WARMUP]") };
    let arch: Arch = arch.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let batch = arg(&args, 1, 64, "BATCH")?;
    let threads = arg(&args, 2, 2, "THREADS")?;
    let steps = arg(&args, 3, 30, "STEPS")?;
    let warmup = arg(&args, 4, 3, "WARMUP")?;
    let augment_level = arg(&args, 5, 0, "AUGMENT")?;
    let augment = augment_level != 0;
    if batch < 2 || threads == 0 || steps == 0 {
        bail!("BATCH must be >= 2 (BatchNorm), THREADS and STEPS >= 1");
    }
    let device = match std::env::var("DEVICE").as_deref() {
        Err(_) | Ok("cpu") => resolve_device(DeviceChoice::Cpu)?,
        Ok("cuda") => resolve_device(DeviceChoice::Cuda)?,
        Ok(other) => bail!("DEVICE must be cpu or cuda, got {other:?}"),
    };
    let amp = std::env::var("AMP").is_ok_and(|v| v == "1");
    tch::set_num_threads(threads as i32);
    // As the trainer does (train::setup): what is measured is how it trains.
    reuse_freed_memory();
    tch::manual_seed(0);
    let mut model = Model::new(&ModelConfig::new(arch), device)?;
    model.net.set_kernel_crops(env_flag("CROP"));
    // As the trainer's --memory-format (default auto); MEMORY_FORMAT=contiguous|channels-last.
    let format = match std::env::var("MEMORY_FORMAT") {
        Err(_) => MemoryFormat::Auto,
        Ok(v) => <MemoryFormat as clap::ValueEnum>::from_str(&v, false)
            .map_err(|e| anyhow::anyhow!("MEMORY_FORMAT (auto, contiguous or channels-last): {e}"))?,
    };
    model.net.set_channels_last(format.channels_last(arch, device))?;
    let x = Tensor::rand([batch as i64, 1, 28, 28], (Kind::Float, device));
    let y = Tensor::randint(10, [batch as i64], (Kind::Int64, device));
    let mut opt = adam(&model.net, 1e-3)?;
    opt.skip_dead_taps(&model.net, env_flag("SKIP"));
    let affine = match augment_level {
        0 | 1 => Augment::affine(12.0, 2.5, 0.1),
        2 => Augment { elastic: 36.0, elastic_sigma: 6.0, ..Augment::affine(12.0, 2.5, 0.1) },
        n => bail!("AUGMENT must be 0 (none), 1 (affine) or 2 (affine + elastic), got {n}"),
    };
    // Time spent augmenting, apart: under load, the share of a step is steadier than two img/s.
    let mut augment_secs = 0.0;
    let mut step = |augment_secs: &mut f64| -> anyhow::Result<f64> {
        let t = Instant::now();
        let xb = if augment { tch::no_grad(|| affine.apply(&x))? } else { x.shallow_clone() };
        *augment_secs += t.elapsed().as_secs_f64();
        // The loss is read back every step, as PyTorch's side does (`loss.item()`).
        let loss = train_step_with(&model.net, &mut opt, &xb, &y, 0.0, amp)?;
        Ok(f64::try_from(&loss)?)
    };
    for _ in 0..warmup {
        step(&mut 0.0)?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        step(&mut augment_secs)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("img/s {:.1}", (steps * batch) as f64 / secs);
    if augment {
        println!("augmentation share {:.4}", augment_secs / secs);
    }
    Ok(())
}
