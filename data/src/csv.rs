//! Hand-written, validating parser for the Digit Recognizer CSV files.
//!
//! The files are ~50-75 MB of small integers; a general CSV reader that allocates per field
//! is an order of magnitude slower than this byte loop. Lines are split into chunks that
//! are parsed on separate threads.

use crate::{DataError, Dataset, PIXELS};

/// Fields of a labelled row (`label` + 784 pixels).
const LABELLED_FIELDS: usize = PIXELS + 1;
/// Don't start a thread for less than this many bytes: spawning costs more than it saves.
const MIN_CHUNK_BYTES: usize = 1 << 20;
/// Upper bound on parser threads.
const MAX_THREADS: usize = 8;
/// Most bytes of a bad field quoted in an error message.
const MAX_QUOTED: usize = 40;

/// Parses one Digit Recognizer CSV held in memory.
///
/// `name` is used in error messages and as [`Dataset::source`]. The header decides the
/// kind: `label,pixel0,...,pixel783` gives a labelled set, `pixel0,...,pixel783` an
/// unlabelled one; any other header is an error. Every row must have the header's field
/// count, pixels must be integers `0..=255` and labels `0..=9`. A UTF-8 BOM, CRLF line
/// ends and trailing newlines are accepted. A file with no bytes, or a header but no
/// rows, is an error.
pub fn parse_csv(bytes: &[u8], name: &str) -> Result<Dataset, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let bytes = trim_trailing_newlines(bytes);
    if bytes.is_empty() {
        return Err(DataError::Empty { file: name.to_string() });
    }
    let (header, body) = match bytes.iter().position(|&b| b == b'\n') {
        Some(nl) => (&bytes[..nl], &bytes[nl + 1..]),
        None => (bytes, &bytes[bytes.len()..]),
    };
    let header = header.strip_suffix(b"\r").unwrap_or(header);
    let labelled = check_header(header, name)?;
    if body.is_empty() {
        return Err(DataError::Invalid {
            file: name.to_string(),
            message: "has a header but no data rows".to_string(),
        });
    }

    let chunks = split_chunks(body, thread_count(body.len()));
    let results: Vec<Result<Parsed, RowError>> = if chunks.len() == 1 {
        vec![parse_chunk(chunks[0], labelled)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks[1..].iter().map(|&c| s.spawn(move || parse_chunk(c, labelled))).collect();
            let mut results = vec![parse_chunk(chunks[0], labelled)];
            for h in handles {
                // A panic in the parser would be a bug in this file; pass it on unchanged.
                results.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
            results
        })
    };

    // Line 1 is the header; chunks before the first failing one parsed completely, so
    // their row counts give the line offset of the failure.
    let mut lines_before = 1;
    let mut parsed = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(p) => {
                lines_before += p.rows;
                parsed.push(p);
            }
            Err(e) => return Err(e.into_data_error(name, lines_before, labelled)),
        }
    }

    let (images, labels) = if parsed.len() == 1 {
        parsed.pop().map(|p| (p.images, p.labels)).unwrap_or_default()
    } else {
        let total: usize = parsed.iter().map(|p| p.rows).sum();
        let mut images = Vec::with_capacity(total * PIXELS);
        let mut labels = Vec::with_capacity(if labelled { total } else { 0 });
        for p in parsed {
            images.extend_from_slice(&p.images);
            labels.extend_from_slice(&p.labels);
        }
        (images, labels)
    };
    Ok(Dataset { images, labels: labelled.then_some(labels), source: name.to_string() })
}

fn trim_trailing_newlines(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Checks the header; returns whether the file is labelled.
fn check_header(header: &[u8], name: &str) -> Result<bool, DataError> {
    let bad = |message: String| DataError::Header {
        file: name.to_string(),
        line: 1,
        message: format!("{message}; expected `label,pixel0,...,pixel783` (train) or `pixel0,...,pixel783` (test)"),
    };
    // Walked, not collected: a header of a million commas must not become a million slices.
    let fields = || header.split(|&b| b == b',');
    let labelled = fields().next() == Some(b"label".as_slice());
    let mut pixels = 0;
    for (i, f) in fields().skip(usize::from(labelled)).enumerate() {
        pixels += 1;
        let expected = crate::pixel_column(i);
        if f != expected.as_bytes() {
            return Err(bad(format!(
                "column {} is {:?}, expected {expected:?}",
                i + usize::from(labelled) + 1,
                // Truncated like values: a file with no newline is all header.
                lossy(&f[..f.len().min(MAX_QUOTED)])
            )));
        }
    }
    if pixels != PIXELS {
        return Err(bad(format!(
            "{} columns (expected {} or {})",
            pixels + usize::from(labelled),
            LABELLED_FIELDS,
            PIXELS
        )));
    }
    Ok(labelled)
}

fn thread_count(len: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(MAX_THREADS).min(len / MIN_CHUNK_BYTES + 1).max(1)
}

/// Splits `body` into up to `n` pieces, each ending just after a `\n` (or at the end).
fn split_chunks(body: &[u8], n: usize) -> Vec<&[u8]> {
    let mut chunks = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..=n {
        if start >= body.len() {
            break;
        }
        let target = (body.len() / n * i).max(start);
        let end = if i == n || target >= body.len() {
            body.len()
        } else {
            match body[target..].iter().position(|&b| b == b'\n') {
                Some(off) => target + off + 1,
                None => body.len(),
            }
        };
        chunks.push(&body[start..end]);
        start = end;
    }
    chunks
}

/// Rows parsed from one chunk.
#[derive(Default)]
struct Parsed {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
}

/// A failure inside a chunk, located by the row's index within the chunk.
struct RowError {
    row: usize,
    kind: RowErrorKind,
    /// The whole offending line (without its line end).
    line: Vec<u8>,
}

enum RowErrorKind {
    FieldCount {
        found: usize,
    },
    /// Field `field` (0-based) spans `start..end` of the line.
    Value {
        field: usize,
        start: usize,
        end: usize,
    },
}

impl RowError {
    fn into_data_error(self, name: &str, lines_before: usize, labelled: bool) -> DataError {
        let file = name.to_string();
        let line = lines_before + self.row + 1;
        let expected = if labelled { LABELLED_FIELDS } else { PIXELS };
        match self.kind {
            RowErrorKind::FieldCount { found } => DataError::FieldCount { file, line, expected, found },
            RowErrorKind::Value { field, start, end } => {
                let text = &self.line[start..end];
                let is_label = labelled && field == 0;
                let column = match (labelled, field) {
                    (true, 0) => "label".to_string(),
                    (true, f) => crate::pixel_column(f - 1),
                    (false, f) => crate::pixel_column(f),
                };
                if is_label {
                    if let Some(value) = parse_u64(text) {
                        return DataError::LabelRange { file, line, column, value };
                    }
                }
                DataError::BadValue {
                    file,
                    line,
                    column,
                    value: lossy(&text[..text.len().min(MAX_QUOTED)]),
                    max: if is_label { 9 } else { 255 },
                }
            }
        }
    }
}

/// Digits only, no sign or spaces; `None` when empty, not digits, or over `u64`.
pub(crate) fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses whole lines of `buf` (it starts at a line start and ends after a `\n` or at
/// the end of the body).
fn parse_chunk(buf: &[u8], labelled: bool) -> Result<Parsed, RowError> {
    let nfields = if labelled { LABELLED_FIELDS } else { PIXELS };
    // Rows are at least 2 bytes per field; over-reserving is cheaper than regrowing.
    let max_rows = buf.len() / (2 * nfields) + 1;
    let mut out = Parsed {
        images: Vec::with_capacity(max_rows * PIXELS),
        labels: Vec::with_capacity(if labelled { max_rows } else { 0 }),
        rows: 0,
    };
    let mut p = 0;
    let mut row = [0u8; LABELLED_FIELDS];
    while p < buf.len() {
        let line_start = p;
        match parse_row(buf, p, &mut row[..nfields]) {
            Ok(next) => p = next,
            Err(kind) => {
                let line_end = buf[line_start..].iter().position(|&b| b == b'\n').map_or(buf.len(), |o| line_start + o);
                let line = &buf[line_start..line_end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let kind = match kind {
                    RowErrorKind::FieldCount { .. } => RowErrorKind::FieldCount {
                        found: if line.is_empty() { 0 } else { line.iter().filter(|&&b| b == b',').count() + 1 },
                    },
                    RowErrorKind::Value { field, start, end } => RowErrorKind::Value {
                        field,
                        start: start - line_start,
                        end: (end - line_start).min(line.len()),
                    },
                };
                return Err(RowError { row: out.rows, kind, line: line.to_vec() });
            }
        }
        if labelled {
            let label = row[0];
            if label > 9 {
                // parse_row only bounds values by 255; re-locate the label text.
                let end = buf[line_start..].iter().position(|&b| b == b',').map_or(buf.len(), |o| line_start + o);
                return Err(RowError {
                    row: out.rows,
                    kind: RowErrorKind::Value { field: 0, start: 0, end: end - line_start },
                    line: buf[line_start..end].to_vec(),
                });
            }
            out.labels.push(label);
            out.images.extend_from_slice(&row[1..]);
        } else {
            out.images.extend_from_slice(&row[..PIXELS]);
        }
        out.rows += 1;
    }
    Ok(out)
}

/// Parses the line starting at `p` into `row` (one byte per field, each `0..=255`).
/// Returns the position after the line end. On error, `Value` positions are absolute
/// and `FieldCount.found` is filled in by the caller.
#[inline]
fn parse_row(buf: &[u8], mut p: usize, row: &mut [u8]) -> Result<usize, RowErrorKind> {
    let last = row.len() - 1;
    for (f, slot) in row.iter_mut().enumerate() {
        // Fast path: most MNIST pixels are a lone `0`.
        if f < last && buf.get(p..p + 2) == Some(b"0,") {
            *slot = 0;
            p += 2;
            continue;
        }
        let start = p;
        let mut v: u32 = 0;
        while let Some(&b) = buf.get(p) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            // Capped so long digit strings cannot overflow; anything > 255 is rejected.
            v = (v * 10 + u32::from(d)).min(10_000);
            p += 1;
        }
        let value_err = |p: usize| {
            // To the next comma or line end: the caller cuts a CRLF's `\r` off with the line,
            // and before a comma a `\r` is part of the bad value.
            let end = buf[p..].iter().position(|&b| b == b',' || b == b'\n').map_or(buf.len(), |o| p + o);
            RowErrorKind::Value { field: f, start, end }
        };
        let ok_value = p > start && v <= 255;
        if f < last {
            match buf.get(p) {
                Some(b',') => {
                    if !ok_value {
                        return Err(value_err(p));
                    }
                    *slot = v as u8;
                    p += 1;
                }
                None | Some(b'\n') => return Err(RowErrorKind::FieldCount { found: 0 }),
                Some(b'\r') if matches!(buf.get(p + 1), None | Some(b'\n')) => {
                    return Err(RowErrorKind::FieldCount { found: 0 })
                }
                Some(_) => return Err(value_err(p)),
            }
        } else {
            let next = match buf.get(p) {
                None => p,
                Some(b'\n') => p + 1,
                Some(b'\r') if buf.get(p + 1).is_none() => p + 1,
                Some(b'\r') if buf.get(p + 1) == Some(&b'\n') => p + 2,
                Some(b',') => return Err(RowErrorKind::FieldCount { found: 0 }),
                Some(_) => return Err(value_err(p)),
            };
            if !ok_value {
                return Err(value_err(p));
            }
            *slot = v as u8;
            return Ok(next);
        }
    }
    // `row` is never empty (784 or 785 fields), so the loop always returns.
    Ok(p)
}
