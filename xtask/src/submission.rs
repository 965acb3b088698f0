//! `xtask check-submission`: is a file a Kaggle submission for a data set's test.csv?
//! (`check_submission` in scripts/test.sh.)

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The submission CSV
    pub file: PathBuf,
    /// Kaggle's zip (or its folder, or a test.csv) whose test.csv gives the rows wanted
    #[arg(long, value_name = "DATA")]
    pub rows_of: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let rows = data::load(&args.rows_of, data::Split::Test)
        .with_context(|| format!("reading test.csv of {}", args.rows_of.display()))?
        .len();
    let file = args.file.display();
    check(&args.file, rows).with_context(|| format!("{file} is not a Kaggle submission of {rows} rows"))?;
    println!("ok: {file} is a Kaggle submission of {rows} rows");
    Ok(())
}

/// Kaggle's header `ImageId,Label`, then one row per test image: ImageIds 1..=rows in order,
/// labels 0-9.
pub fn check(path: &Path, rows: usize) -> Result<()> {
    // Header, two fields a row and labels 0-9: data's reader checks those.
    let pairs = data::read_submission(path)?;
    ensure!(pairs.len() == rows, "{} rows", pairs.len());
    if let Some((i, (id, _))) = pairs.iter().enumerate().find(|(i, (id, _))| *id as usize != i + 1) {
        anyhow::bail!("line {}: ImageId {id}, expected {}", i + 2, i + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("submission.csv");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn the_right_shape_passes() {
        let (_dir, path) = submission("ImageId,Label\n1,7\n2,0\n3,9\n");
        check(&path, 3).unwrap();
    }

    #[test]
    fn wrong_row_counts_fail() {
        let (_dir, path) = submission("ImageId,Label\n1,7\n2,0\n3,9\n");
        assert_eq!(format!("{:#}", check(&path, 4).unwrap_err()), "3 rows");
        assert_eq!(format!("{:#}", check(&path, 2).unwrap_err()), "3 rows");
        let (_dir, empty) = submission("ImageId,Label\n");
        assert_eq!(format!("{:#}", check(&empty, 1).unwrap_err()), "0 rows");
    }

    #[test]
    fn a_wrong_header_ids_or_labels_fail() {
        for (text, why) in [
            ("ImageId,label\n1,7\n", "header"),
            ("1,7\n2,0\n", "header"),
            ("ImageId,Label\n2,7\n", "line 2: ImageId 2, expected 1"),
            ("ImageId,Label\n1,7\n1,0\n", "line 3: ImageId 1, expected 2"),
            ("ImageId,Label\n1,10\n", "Label"),
            ("ImageId,Label\n1,7,0\n", "expected 2 fields"),
        ] {
            let (_dir, path) = submission(text);
            let err = format!("{:#}", check(&path, text.lines().count() - 1).unwrap_err());
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn rows_come_from_the_data_sets_test_csv() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample/digit-recognizer.zip");
        let rows = data::load(&sample, data::Split::Test).unwrap().len();
        let mut text = String::from("ImageId,Label\n");
        (1..=rows).for_each(|i| text.push_str(&format!("{i},{}\n", i % 10)));
        let (_dir, path) = submission(&text);
        run(Args { file: path.clone(), rows_of: sample.clone() }).unwrap();
        // The last row dropped.
        std::fs::write(&path, &text[..text.rfind(&format!("\n{rows},")).unwrap() + 1]).unwrap();
        let err = format!("{:#}", run(Args { file: path.clone(), rows_of: sample }).unwrap_err());
        assert!(err.ends_with(&format!(" is not a Kaggle submission of {rows} rows: {} rows", rows - 1)), "{err}");
    }
}
