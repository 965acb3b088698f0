//! The validation split the members held out, written as Kaggle-shaped CSVs so that
//! `infer --evaluate val.csv` scores members and ensembles on images none of them trained on.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// The (val_fraction, split_seed) every member trained with, read from their checkpoints'
/// train_config.json: the split is the members' own, whatever TRAIN_FLAGS or defaults did.
pub fn held_out(configs: &[PathBuf]) -> Result<(f64, u64)> {
    let mut seen: Option<(f64, u64, &Path)> = None;
    for path in configs {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        let fraction = json["val_fraction"].as_f64().with_context(|| format!("{}: no val_fraction", path.display()))?;
        let seed = json["split_seed"].as_u64().with_context(|| format!("{}: no split_seed", path.display()))?;
        ensure!(fraction > 0.0, "{}: the member held nothing out (val_fraction {fraction})", path.display());
        match seen {
            Some((f, s, first)) if (f, s) != (fraction, seed) => bail!(
                "the members held out different splits: {} has val_fraction {f}, split_seed {s}; {} {fraction}, {seed}",
                first.display(),
                path.display()
            ),
            Some(_) => {}
            None => seen = Some((fraction, seed, path)),
        }
    }
    let (fraction, seed, _) = seen.context("no members")?;
    Ok((fraction, seed))
}

/// Writes `dir/train.csv` and `dir/val.csv` from `data`'s train.csv, says so, and returns the
/// path of val.csv.
pub fn write(data: &Path, dir: &Path, fraction: f64, seed: u64) -> Result<PathBuf> {
    let ds = data::load(data, data::Split::Train).with_context(|| format!("reading {}", data.display()))?;
    let labels = ds.labels.as_ref().context("the data has no labels")?;
    let (train, val) = data::stratified_split(labels, fraction, seed);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let val_csv = dir.join("val.csv");
    data::write_csv(&dir.join("train.csv"), &ds.subset(&train))?;
    data::write_csv(&val_csv, &ds.subset(&val))?;
    // The line data's split example prints; scripts/test.sh looks for "split seed N".
    println!(
        "{}: {} training, {} validation images (split seed {seed}) -> {}",
        ds.source,
        train.len(),
        val.len(),
        dir.display()
    );
    Ok(val_csv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn members_must_agree_on_a_split_that_holds_something_out() {
        let dir = tempfile::tempdir().unwrap();
        let a = config(dir.path(), "a", r#"{"val_fraction": 0.2, "split_seed": 7}"#);
        let b = config(dir.path(), "b", r#"{"val_fraction": 0.2, "split_seed": 7, "seed": 2}"#);
        assert_eq!(held_out(&[a.clone(), b]).unwrap(), (0.2, 7));
        let c = config(dir.path(), "c", r#"{"val_fraction": 0.2, "split_seed": 42}"#);
        assert!(format!("{:#}", held_out(&[a.clone(), c]).unwrap_err()).contains("different splits"));
        let none = config(dir.path(), "d", r#"{"val_fraction": 0.0, "split_seed": 42}"#);
        assert!(format!("{:#}", held_out(&[none]).unwrap_err()).contains("held nothing out"));
        assert!(held_out(&[dir.path().join("missing")]).is_err());
    }
}
