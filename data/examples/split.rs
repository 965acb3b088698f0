//! Writes the stratified train/validation split the trainer uses as two Kaggle-shaped CSVs,
//! so that `infer --evaluate val.csv` judges models (and ensembles) on exactly the images
//! their training never saw.
//!
//!     cargo run --release -p data --example split -- digit-recognizer.zip OUT_DIR [VAL_FRACTION] [SEED]
//!
//! VAL_FRACTION and SEED default to the trainer's `--val-fraction` and `--split-seed` defaults
//! ([`data::VAL_FRACTION`], [`data::SPLIT_SEED`]); give them only for a run that changed those.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        let usage = format!(
            "usage: split <train.csv|folder|zip> <out-dir> [val-fraction {}] [seed {}]",
            data::VAL_FRACTION,
            data::SPLIT_SEED
        );
        return Err(usage.into());
    }
    let fraction: f64 = args.get(2).map_or(Ok(data::VAL_FRACTION), |s| s.parse())?;
    let seed: u64 = args.get(3).map_or(Ok(data::SPLIT_SEED), |s| s.parse())?;
    let ds = data::load(&PathBuf::from(&args[0]), data::Split::Train)?;
    let labels = ds.labels.as_ref().ok_or("the data has no labels")?;
    let (train, val) = data::stratified_split(labels, fraction, seed);
    let out = PathBuf::from(&args[1]);
    data::write_csv(&out.join("train.csv"), &ds.subset(&train))?;
    data::write_csv(&out.join("val.csv"), &ds.subset(&val))?;
    println!("{}: {} training, {} validation images -> {}", ds.source, train.len(), val.len(), out.display());
    Ok(())
}
