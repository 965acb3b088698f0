//! Where the CSV bytes come from: the Kaggle zip, a folder, or a CSV file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::{parse_csv, DataError, Dataset};

/// Deflate's largest expansion: 258 bytes from a 2-bit code (zlib's "1032:1").
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Which of Kaggle's two files to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// `train.csv`: 42,000 labelled images (must be labelled).
    Train,
    /// `test.csv`: 28,000 unlabelled images to predict for the submission.
    Test,
}

impl Split {
    /// The file name Kaggle uses for this split (`train.csv` / `test.csv`).
    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "train.csv",
            Split::Test => "test.csv",
        }
    }
}

/// Loads one split from `source`, which may be
///
/// * a folder holding `train.csv` / `test.csv`,
/// * a Kaggle zip (`digit-recognizer.zip`, entries at its root; recognised by its
///   content, not its name), or
/// * a CSV file itself: then `split` is ignored and the header decides whether it is
///   labelled.
///
/// From a folder or zip, [`Split::Train`] must be labelled. Every row is validated
/// (see [`parse_csv`]); errors name the file, line and column.
pub fn load(source: &Path, split: Split) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(source).map_err(|e| DataError::io(source, e))?;
    let data = if meta.is_dir() {
        load_csv(&source.join(split.file_name()))?
    } else {
        let mut file = File::open(source).map_err(|e| DataError::io(source, e))?;
        if is_zip(&mut file).map_err(|e| DataError::io(source, e))? {
            load_zip_entry(file, source, split.file_name())?
        } else {
            return read_csv_file(file, source);
        }
    };
    if split == Split::Train && data.labels.is_none() {
        return Err(DataError::Invalid {
            file: data.source,
            message: "has no label column, but the training split needs labels".to_string(),
        });
    }
    Ok(data)
}

/// Loads and validates one CSV file (labelled or not, as its header says).
/// A missing file gives [`DataError::NotFound`] naming `path`.
pub fn load_csv(path: &Path) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    read_csv_file(file, path)
}

fn read_csv_file(mut file: File, path: &Path) -> Result<Dataset, DataError> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| DataError::io(path, e))?;
    parse_csv(&bytes, &path.display().to_string())
}

/// Sniffs the zip signature (local file header, or the end record of an empty zip),
/// then rewinds.
fn is_zip(file: &mut File) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(got == 4 && (magic == *b"PK\x03\x04" || magic == *b"PK\x05\x06"))
}

/// Reads `entry` from the archive: at the root as Kaggle ships it or, failing that, the
/// one entry with that file name in a sub-folder (a re-zipped download folder).
fn load_zip_entry(file: File, archive: &Path, entry: &str) -> Result<Dataset, DataError> {
    let archive_len = file.metadata().map_err(|e| DataError::io(archive, e))?.len();
    let zip_err = |source| DataError::Zip { path: archive.to_path_buf(), source };
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(zip_err)?;
    let name = if zip.index_for_name(entry).is_some() {
        entry.to_string()
    } else {
        let suffix = format!("/{entry}");
        let found: Vec<String> =
            zip.file_names().filter_map(|n| n.ok()).filter(|n| n.ends_with(&suffix)).map(|n| n.into_owned()).collect();
        match <[String; 1]>::try_from(found) {
            Ok([n]) => n,
            _ => return Err(DataError::MissingEntry { archive: archive.to_path_buf(), entry: entry.to_string() }),
        }
    };
    let archive_name =
        archive.file_name().map_or_else(|| archive.display().to_string(), |n| n.to_string_lossy().into_owned());
    let human = format!("{archive_name}:{name}");

    let mut reader = zip.by_name(&name).map_err(zip_err)?;
    // The size comes from the archive; cap the reservation so a corrupt header cannot
    // make us allocate gigabytes up front: no entry expands to more than the whole archive
    // inflated at deflate's best ratio.
    let plausible = archive_len.saturating_mul(MAX_DEFLATE_RATIO);
    let reserve = usize::try_from(reader.size().min(plausible)).unwrap_or(0).min(1 << 30);
    let mut bytes = Vec::with_capacity(reserve);
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::Io { path: format!("{}:{name}", archive.display()).into(), source: e })?;
    drop(reader);
    parse_csv(&bytes, &human)
}
