//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong reading, validating or writing the data.
///
/// Every variant names the file (and, for content errors, the 1-based line and the
/// column) so a user can open the file and find the problem without a debugger.
/// Underlying io / zip errors are kept as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The path given (or a file expected inside a folder / zip) does not exist.
    #[error("no such file: {}", path.display())]
    NotFound {
        /// The path that was looked for.
        path: PathBuf,
    },

    /// A zip archive lacks an expected entry (e.g. `train.csv`).
    #[error("no such file: {}:{entry} (the archive has no entry {entry})", archive.display())]
    MissingEntry {
        /// The archive that was searched.
        archive: PathBuf,
        /// The entry name that was looked for.
        entry: String,
    },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A zip archive could not be opened or an entry could not be read.
    #[error("{}: {source}", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: zip::result::ZipError,
    },

    /// The file has no content at all (not even a header).
    #[error("{file}: file is empty")]
    Empty {
        /// Human name of the file.
        file: String,
    },

    /// The header line is not one of the accepted ones.
    #[error("{file}:{line}: bad header: {message}")]
    Header {
        /// Human name of the file.
        file: String,
        /// 1-based line number (always 1 for CSV headers).
        line: usize,
        /// What is wrong.
        message: String,
    },

    /// A row has the wrong number of comma separated fields.
    #[error("{file}:{line}: expected {expected} fields, found {found}")]
    FieldCount {
        /// Human name of the file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Fields the header promises.
        expected: usize,
        /// Fields on this line.
        found: usize,
    },

    /// A pixel (or other numeric) value is not an integer in the allowed range.
    #[error("{file}:{line}: column {column}: {value:?} is not an integer in 0..={max}")]
    BadValue {
        /// Human name of the file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Column name from the header, e.g. `pixel3`.
        column: String,
        /// The offending text (lossily decoded, truncated to 40 bytes).
        value: String,
        /// Largest allowed value.
        max: u32,
    },

    /// A label is an integer but not a digit class.
    #[error("{file}:{line}: column {column}: label {value} out of range 0..=9")]
    LabelRange {
        /// Human name of the file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Column name, `label` or `Label`.
        column: String,
        /// The offending value.
        value: u64,
    },

    /// Anything else about the content of a file (e.g. a training split without labels).
    #[error("{file}: {message}")]
    Invalid {
        /// Human name of the file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl DataError {
    /// Maps an io error from opening `path` to [`DataError::NotFound`] when the file is
    /// missing, so the message names the path instead of a bare "No such file or directory".
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path }
        } else {
            DataError::Io { path, source }
        }
    }
}
