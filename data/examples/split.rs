//! Writes the stratified train/validation split the trainer uses as two Kaggle-shaped CSVs,
//! so that `infer --evaluate val.csv` judges models (and ensembles) on exactly the images
//! their training never saw.
//!
//!     cargo run --release -p data --example split -- digit-recognizer.zip OUT_DIR [--split-seed S]
//!
//! The fraction and seed default to the trainer's `--val-fraction` and `--split-seed` defaults
//! ([`data::VAL_FRACTION`], [`data::SPLIT_SEED`]); give them only for a run that changed those.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Writes the trainer's train/validation split as OUT/train.csv and OUT/val.csv")]
struct Args {
    /// Kaggle's zip, its folder, or a train.csv.
    data: PathBuf,
    /// Folder to write train.csv and val.csv into.
    out: PathBuf,
    /// Share of each class held out for validation (the trainer's --val-fraction).
    #[arg(long, default_value_t = data::VAL_FRACTION)]
    val_fraction: f64,
    /// Seed of the split (the trainer's --split-seed).
    #[arg(long, default_value_t = data::SPLIT_SEED)]
    split_seed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let ds = data::load(&args.data, data::Split::Train)?;
    let labels = ds.labels.as_ref().ok_or("the data has no labels")?;
    let (train, val) = data::stratified_split(labels, args.val_fraction, args.split_seed);
    data::write_csv(&args.out.join("train.csv"), &ds.subset(&train))?;
    data::write_csv(&args.out.join("val.csv"), &ds.subset(&val))?;
    println!(
        "{}: {} training, {} validation images (split seed {}) -> {}",
        ds.source,
        train.len(),
        val.len(),
        args.split_seed,
        args.out.display()
    );
    Ok(())
}
