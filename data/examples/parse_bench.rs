//! Times reading and parsing Kaggle's test.csv (and train.csv).
//!
//! `cargo run --release -p data --example parse_bench -- [digit-recognizer.zip]`
//! (default: ../shared/data/digit-recognizer.zip). Decompression and parsing are timed
//! separately: only the parse is this crate's code path to keep fast.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data/digit-recognizer.zip"));
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path)?)?;
    for name in ["test.csv", "train.csv"] {
        let t = Instant::now();
        let mut bytes = Vec::new();
        zip.by_name(name)?.read_to_end(&mut bytes)?;
        let unzip = t.elapsed();
        let mut best = f64::MAX;
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let ds = data::parse_csv(&bytes, name)?;
            best = best.min(t.elapsed().as_secs_f64());
            rows = ds.len();
        }
        let t = Instant::now();
        let split = if name == "test.csv" { data::Split::Test } else { data::Split::Train };
        let ds = data::load(&path, split)?;
        let load = t.elapsed();
        assert_eq!(ds.len(), rows);
        println!(
            "{name}: {rows} rows, {:.1} MB; unzip {:.1} ms, parse best of 5 {:.1} ms ({:.0} MB/s); \
             data::load (unzip+parse) {:.1} ms",
            bytes.len() as f64 / 1e6,
            unzip.as_secs_f64() * 1e3,
            best * 1e3,
            bytes.len() as f64 / 1e6 / best,
            load.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
