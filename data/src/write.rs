//! Crash-safe file writes and the Kaggle submission format.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::csv::{lossy, parse_u64};
use crate::DataError;

const SUBMISSION_HEADER: &str = "ImageId,Label";

/// Writes `bytes` to `path` atomically: readers see the old file or the complete new one,
/// never a partial write (see [`atomic_write_with`]).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically with content produced by `write`.
///
/// The content goes to a uniquely named temporary file in the same folder, which is
/// flushed, fsynced and then renamed over `path` (the folder is fsynced too, where the
/// platform allows). On any error the temporary file is removed and `path` is untouched.
/// Missing parent folders are created. Used for submissions, checkpoints and ONNX files,
/// so an interrupted run never leaves a truncated file that looks valid.
pub fn atomic_write_with<F>(path: &Path, write: F) -> Result<(), DataError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    atomic_write_in(path, None, write)
}

/// As [`atomic_write_with`], with the temporary file in `tmp_dir` (an existing folder on
/// the same file system) instead of `path`'s folder when one is given: for folders whose
/// every entry is read as data (MLflow's `params/`, `tags/`, artifacts), where a temporary
/// file left by a crash would read as one more entry.
pub fn atomic_write_in<F>(path: &Path, tmp_dir: Option<&Path>, write: F) -> Result<(), DataError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let io_err = |source| DataError::Io { path: path.to_path_buf(), source };
    let file_name = path.file_name().ok_or_else(|| DataError::Invalid {
        file: path.display().to_string(),
        message: "is not a file path".to_string(),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err)?;

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // A name near the 255-byte limit leaves no room for the suffix: shorten it (on a
    // character boundary) to a length that always fits.
    let name = file_name.to_string_lossy();
    let mut keep = name.len().min(MAX_TMP_NAME_STEM);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let tmp = tmp_dir.unwrap_or(&dir).join(format!(
        ".{}.{}.{}.tmp",
        &name[..keep],
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err)?;

    let result = (|| {
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    sync_dir(&dir);
    Ok(())
}

/// Longest file name kept whole in a temporary file's name: with the dot, process id,
/// counter and `.tmp` around it the name stays below the usual 255-byte limit.
const MAX_TMP_NAME_STEM: usize = 200;

/// Makes the rename durable. Best effort: not every platform can open a folder.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes predictions in Kaggle's submission format, atomically:
/// `ImageId,Label` then one `id,label` line per image, ids counting from 1 in the order
/// of `test.csv`.
///
/// Fails, writing nothing, if `labels` is empty or holds a value above 9 (either is a bug
/// upstream that Kaggle would only report after upload).
pub fn write_submission(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    let file = path.display().to_string();
    if labels.is_empty() {
        return Err(DataError::Invalid {
            file,
            message: "refusing to write a submission with no predictions".to_string(),
        });
    }
    if let Some(i) = labels.iter().position(|&l| l > 9) {
        return Err(DataError::LabelRange {
            file,
            line: i + 2,
            column: "Label".to_string(),
            value: u64::from(labels[i]),
        });
    }
    let mut out = String::with_capacity(16 + labels.len() * 8);
    out.push_str(SUBMISSION_HEADER);
    out.push('\n');
    for (i, &l) in labels.iter().enumerate() {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{},{}", i + 1, l);
    }
    atomic_write(path, out.as_bytes())
}

/// Reads a submission file back as `(ImageId, Label)` pairs, validating the
/// `ImageId,Label` header, the field count, and that labels are `0..=9`. Ids are returned
/// as written (not checked for order); mainly for tests and sanity checks.
pub fn read_submission(path: &Path) -> Result<Vec<(u32, u8)>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let file = path.display().to_string();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let bytes = &bytes[..end];
    if bytes.is_empty() {
        return Err(DataError::Empty { file });
    }
    let mut lines = bytes.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let header = lines.next().unwrap_or_default();
    if header != SUBMISSION_HEADER.as_bytes() {
        return Err(DataError::Header {
            file,
            line: 1,
            message: format!("{:?}, expected {SUBMISSION_HEADER:?}", lossy(header)),
        });
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let fields: Vec<&[u8]> = line.split(|&b| b == b',').collect();
        let [id, label] = fields[..] else {
            return Err(DataError::FieldCount {
                file,
                line: line_no,
                expected: 2,
                found: if line.is_empty() { 0 } else { fields.len() },
            });
        };
        let bad = |column: &str, text: &[u8], max: u32| DataError::BadValue {
            file: file.clone(),
            line: line_no,
            column: column.to_string(),
            value: lossy(&text[..text.len().min(40)]),
            max,
        };
        let id = parse_u64(id).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad("ImageId", id, u32::MAX))?;
        let label = match parse_u64(label) {
            Some(v) if v <= 9 => v as u8,
            Some(v) => {
                return Err(DataError::LabelRange { file, line: line_no, column: "Label".to_string(), value: v })
            }
            None => return Err(bad("Label", label, 9)),
        };
        out.push((id, label));
    }
    Ok(out)
}

/// Writes `ds` in Kaggle's layout, atomically: `label,pixel0..pixel783` rows when it is
/// labelled (`train.csv`), `pixel0..pixel783` otherwise (`test.csv`). Reading the file back
/// with [`crate::load_csv`] gives `ds` again; used to hand a validation split to `infer
/// --evaluate` so that an ensemble is judged on exactly the images its members never saw.
pub fn write_csv(path: &Path, ds: &crate::Dataset) -> Result<(), DataError> {
    use std::fmt::Write as _;
    let labels = ds.labels.as_deref();
    let mut out = String::with_capacity(ds.len() * crate::PIXELS * 3);
    if labels.is_some() {
        out.push_str("label,");
    }
    let header: Vec<String> = (0..crate::PIXELS).map(crate::pixel_column).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for i in 0..ds.len() {
        if let Some(l) = labels {
            let _ = write!(out, "{},", l[i]);
        }
        for (j, p) in ds.image(i).iter().enumerate() {
            let _ = write!(out, "{}{p}", if j == 0 { "" } else { "," });
        }
        out.push('\n');
    }
    atomic_write(path, out.as_bytes())
}
