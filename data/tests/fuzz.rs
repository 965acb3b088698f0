//! Property tests of the reader against inputs it was not written for: arbitrary bytes, the
//! committed sample's rows with random edits, and zips built from them with random edits.
//! The reader must never panic, never make an allocation out of proportion to its input
//! (a header or zip field claiming a huge count must not be trusted), agree with a naive
//! reference parser, and name the file, line and column of every content error.

mod common;
mod largest_alloc;

use std::io::{Read, Write};
use std::sync::OnceLock;

use data::{load, parse_csv, DataError, Split, PIXELS};
use largest_alloc::largest_allocation;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// What a CSV of `len` bytes may allocate at once: a row is at least 2 bytes per field and
/// its pixels take one byte, so a few times the input plus fixed-size buffers.
fn csv_budget(len: usize) -> usize {
    4 * len + (64 << 10)
}

/// A zip may hold deflate data, which expands at most ~1032x, and `read_to_end` doubles its
/// buffer: anything past that comes from trusting a size field.
fn zip_budget(len: usize) -> usize {
    2 * 1032 * len + (1 << 20)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // A failure is reported with its input; nothing is written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// --- inputs -------------------------------------------------------------------------------

/// The header and first rows of the sample's train.csv and test.csv, as stored in the zip.
fn sample_heads() -> &'static [Vec<u8>; 2] {
    static HEADS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    HEADS.get_or_init(|| {
        let file = std::fs::File::open(common::sample_zip()).expect("sample zip");
        let mut zip = zip::ZipArchive::new(file).expect("sample zip opens");
        ["train.csv", "test.csv"].map(|name| {
            let mut text = Vec::new();
            zip.by_name(name).expect("sample entry").read_to_end(&mut text).expect("sample entry reads");
            // Header plus three rows: enough for every kind of line, small enough to be fast.
            let end = text.iter().enumerate().filter(|&(_, &b)| b == b'\n').nth(3).map_or(text.len(), |(i, _)| i + 1);
            text.truncate(end);
            text
        })
    })
}

/// One random edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    /// A run of one byte: giant fields, giant lines, thousands of commas or newlines.
    Run(Index, u8, usize),
    /// A little-endian u32 written over the bytes: a count or size field set to an extreme.
    Word(Index, u32),
    Truncate(Index),
    /// A zip header field (size, count, offset, name length...) set to `u32`'s low bytes.
    ZipField(Index, u32),
}

/// Where the size, count, offset and length fields of zip headers lie in `bytes`: (position,
/// width) for each, found from the header signatures.
fn zip_fields(bytes: &[u8]) -> Vec<(usize, usize)> {
    // (signature, [(offset from the signature, width)]): local file header, central
    // directory header, end of central directory record.
    type Fields = &'static [(usize, usize)];
    const LAYOUTS: [(&[u8; 4], Fields); 3] = [
        (b"PK\x03\x04", &[(14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]),
        (b"PK\x01\x02", &[(16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (42, 4)]),
        (b"PK\x05\x06", &[(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]),
    ];
    let mut fields = Vec::new();
    for at in 0..bytes.len().saturating_sub(3) {
        for (signature, layout) in LAYOUTS {
            if &bytes[at..at + 4] == signature {
                fields.extend(layout.iter().map(|&(off, width)| (at + off, width)));
            }
        }
    }
    fields.retain(|&(at, width)| at + width <= bytes.len());
    fields
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![prop::sample::select(b"0123456789,\r\n-+ .x\xEF\xBB\xBF\xFF\0".to_vec()), any::<u8>(),]
}

fn word() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(i32::MAX as u32),
        Just(1 << 30),
        Just(1 << 16),
        Just(0xFFFF),
        Just(0),
        any::<u32>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<Index>().prop_map(Edit::Remove),
        1 => (any::<Index>(), interesting_byte(), 1..20_000usize).prop_map(|(i, b, n)| Edit::Run(i, b, n)),
        2 => (any::<Index>(), word()).prop_map(|(i, w)| Edit::Word(i, w)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        if len == 0 {
            break;
        }
        match *e {
            Edit::Set(ref i, b) => bytes[i.index(len)] = b,
            Edit::Insert(ref i, b) => bytes.insert(i.index(len + 1), b),
            Edit::Remove(ref i) => {
                bytes.remove(i.index(len));
            }
            Edit::Run(ref i, b, n) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, std::iter::repeat_n(b, n));
            }
            Edit::Word(ref i, w) => {
                let at = i.index(len);
                let end = (at + 4).min(len);
                bytes[at..end].copy_from_slice(&w.to_le_bytes()[..end - at]);
            }
            Edit::Truncate(ref i) => bytes.truncate(i.index(len)),
            Edit::ZipField(ref i, w) => {
                let fields = zip_fields(&bytes);
                if !fields.is_empty() {
                    let (at, width) = fields[i.index(fields.len())];
                    bytes[at..at + width].copy_from_slice(&w.to_le_bytes()[..width]);
                }
            }
        }
    }
    bytes
}

/// A sample head (train or test), with or without a BOM and CRLF line ends, then edited.
fn mutated_csv() -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), any::<bool>(), any::<bool>(), prop::collection::vec(edit(), 0..6)).prop_map(
        |(train, bom, crlf, edits)| {
            let head = &sample_heads()[usize::from(!train)];
            let mut bytes = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
            for &b in head {
                if crlf && b == b'\n' {
                    bytes.push(b'\r');
                }
                bytes.push(b);
            }
            apply(bytes, &edits)
        },
    )
}

// --- a naive reference parser ---------------------------------------------------------------

/// The rows the reader must give, or the 1-based line of the first problem: the documented
/// rules (BOM, CRLF, trailing newlines, exact header, field count, digits 0..=255, labels
/// 0..=9), written the slow, obvious way.
fn reference(bytes: &[u8]) -> Result<(bool, Vec<Vec<u8>>), usize> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let end = bytes.iter().rposition(|&b| b != b'\n' && b != b'\r').map_or(0, |i| i + 1);
    let mut lines = bytes[..end].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let header = lines.next().unwrap_or_default();
    let pixels: Vec<String> = (0..PIXELS).map(|i| format!("pixel{i}")).collect();
    let labelled = if header == pixels.join(",").as_bytes() {
        false
    } else if header == format!("label,{}", pixels.join(",")).as_bytes() {
        true
    } else {
        return Err(1);
    };
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let fields: Vec<&[u8]> = line.split(|&b| b == b',').collect();
        let values: Option<Vec<u8>> = fields
            .iter()
            .map(|f| std::str::from_utf8(f).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit())))
            .map(|s| s.and_then(|s| s.parse::<u64>().ok().or((!s.is_empty()).then_some(u64::MAX))))
            .map(|v| v.and_then(|v| u8::try_from(v).ok()))
            .collect();
        let ok =
            fields.len() == PIXELS + usize::from(labelled) && values.as_ref().is_some_and(|v| !labelled || v[0] <= 9);
        if !ok {
            return Err(i + 2);
        }
        rows.push(values.unwrap_or_default());
    }
    if rows.is_empty() {
        return Err(1);
    }
    Ok((labelled, rows))
}

/// Field `index` of 1-based line `line` of `bytes` as the reader quotes it (without the
/// line's CRLF, at most 40 bytes).
fn quoted_field(bytes: &[u8], line: usize, index: usize) -> Option<String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let line = bytes.split(|&b| b == b'\n').nth(line - 1)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let field = line.split(|&b| b == b',').nth(index)?;
    Some(String::from_utf8_lossy(&field[..field.len().min(40)]).into_owned())
}

/// The reader's verdict on `bytes` (named `name`) is the reference's, and its error says
/// where: the same line, the right column, the offending text.
fn check_parse(bytes: &[u8], name: &str) -> Result<(), TestCaseError> {
    let (got, largest) = largest_allocation(|| parse_csv(bytes, name));
    prop_assert!(
        largest <= csv_budget(bytes.len()),
        "allocated {largest} bytes at once for {} bytes of input",
        bytes.len()
    );
    match (got, reference(bytes)) {
        (Ok(ds), Ok((labelled, rows))) => {
            prop_assert_eq!(ds.len(), rows.len());
            prop_assert_eq!(ds.source.as_str(), name);
            for (i, row) in rows.iter().enumerate() {
                let pixels = &row[usize::from(labelled)..];
                prop_assert_eq!(&ds.images[i * PIXELS..(i + 1) * PIXELS], pixels);
                if let Some(labels) = &ds.labels {
                    prop_assert_eq!(labels[i], row[0]);
                }
            }
            prop_assert_eq!(ds.labels.is_some(), labelled);
        }
        (Ok(ds), Err(line)) => prop_assert!(false, "accepted {} rows, reference refuses line {line}", ds.len()),
        (Err(e), Ok(_)) => prop_assert!(false, "refused a valid file: {e}"),
        (Err(e), Err(want_line)) => check_error(&e, bytes, name, want_line)?,
    }
    Ok(())
}

fn check_error(e: &DataError, bytes: &[u8], name: &str, want_line: usize) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(msg.starts_with(name), "{msg}");
    // A message quotes at most a short piece of the input, however long its lines.
    prop_assert!(msg.len() <= name.len() + 400, "{}-byte message: {msg:.600}", msg.len());
    match e {
        DataError::Empty { .. } => {
            prop_assert!(bytes.iter().all(|&b| matches!(b, b'\r' | b'\n' | 0xEF | 0xBB | 0xBF)))
        }
        DataError::Invalid { .. } | DataError::Header { .. } => {
            prop_assert_eq!(want_line, 1, "{}", msg)
        }
        DataError::FieldCount { line, found, expected, .. } => {
            prop_assert_eq!(*line, want_line, "{}", msg);
            prop_assert_ne!(found, expected);
            let fields = (0..).take_while(|&i| quoted_field(bytes, *line, i).is_some()).count();
            let blank = quoted_field(bytes, *line, 0).is_some_and(|f| f.is_empty()) && fields == 1;
            prop_assert_eq!(*found, if blank { 0 } else { fields }, "{}", msg);
        }
        DataError::BadValue { line, column, value, .. } => {
            prop_assert_eq!(*line, want_line, "{}", msg);
            let index = column_index(column, bytes);
            prop_assert_eq!(Some(value.clone()), quoted_field(bytes, *line, index), "{}", msg);
        }
        DataError::LabelRange { line, column, value, .. } => {
            prop_assert_eq!(*line, want_line, "{}", msg);
            prop_assert_eq!(column.as_str(), "label");
            prop_assert!(*value > 9);
            prop_assert_eq!(
                Some(value.to_string()),
                quoted_field(bytes, *line, 0).map(|f| f.trim_start_matches('0').to_string()).map(|f| if f.is_empty() {
                    "0".into()
                } else {
                    f
                })
            );
        }
        other => prop_assert!(false, "unexpected error kind for in-memory CSV: {other:?}"),
    }
    Ok(())
}

/// Index of the field named `column` (`label` or `pixelN`) in a file with `bytes`' header.
fn column_index(column: &str, bytes: &[u8]) -> usize {
    let labelled = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes).starts_with(b"label,");
    match column.strip_prefix("pixel") {
        Some(n) => n.parse::<usize>().expect("pixel column number") + usize::from(labelled),
        None => {
            assert_eq!(column, "label");
            0
        }
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn csv_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        check_parse(&bytes, "fuzz.csv")?;
    }

    #[test]
    fn csv_mutated_sample_rows(bytes in mutated_csv()) {
        check_parse(&bytes, "train.csv")?;
    }

    /// A valid header followed by bytes from the CSV alphabet: most inputs get past the
    /// header, so the row parser (field counts, values, line ends) is what gets exercised.
    #[test]
    fn csv_rows_of_csv_alphabet(
        train in any::<bool>(),
        rows in prop::collection::vec(prop::sample::select(b"0123456789,,,\r\n".to_vec()), 0..8192),
    ) {
        let head = &sample_heads()[usize::from(!train)];
        let header_end = head.iter().position(|&b| b == b'\n').map_or(head.len(), |i| i + 1);
        let mut bytes = head[..header_end].to_vec();
        bytes.extend_from_slice(&rows);
        check_parse(&bytes, "test.csv")?;
    }
}

// --- zips ---------------------------------------------------------------------------------

/// The sample heads as a zip, stored or deflated.
fn sample_zip_bytes(deflate: bool) -> &'static [u8] {
    static ZIPS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    &ZIPS.get_or_init(|| {
        [false, true].map(|deflate| {
            let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            for (name, text) in ["train.csv", "test.csv"].iter().zip(sample_heads()) {
                w.start_file(*name, opts).expect("zip entry");
                w.write_all(text).expect("zip write");
            }
            w.finish().expect("zip finish").into_inner()
        })
    })[usize::from(deflate)]
}

/// Loads `bytes` written to a file as a data source; every error names the archive, and the
/// allocation stays within what its size allows.
fn check_zip(bytes: &[u8], split: Split) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.zip");
    std::fs::write(&path, bytes).expect("write zip");
    let (got, largest) = largest_allocation(|| load(&path, split));
    prop_assert!(
        largest <= zip_budget(bytes.len()),
        "allocated {largest} bytes at once for a {}-byte zip",
        bytes.len()
    );
    if let Err(e) = got {
        let msg = e.to_string();
        prop_assert!(msg.contains("fuzz.zip"), "{msg}");
        prop_assert!(msg.len() <= 1000, "{}-byte message: {msg:.600}", msg.len());
        if let DataError::BadValue { line, .. }
        | DataError::FieldCount { line, .. }
        | DataError::LabelRange { line, .. } = e
        {
            prop_assert!(line >= 2, "{msg}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn zip_mutated_sample(
        deflate in any::<bool>(),
        train in any::<bool>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let bytes = apply(sample_zip_bytes(deflate).to_vec(), &edits);
        check_zip(&bytes, if train { Split::Train } else { Split::Test })?;
    }

    /// Header fields claiming huge sizes, counts or offsets (and some byte edits besides).
    #[test]
    fn zip_extreme_header_fields(
        deflate in any::<bool>(),
        train in any::<bool>(),
        fields in prop::collection::vec((any::<Index>(), word()).prop_map(|(i, w)| Edit::ZipField(i, w)), 1..4),
        edits in prop::collection::vec(edit(), 0..2),
    ) {
        let bytes = apply(apply(sample_zip_bytes(deflate).to_vec(), &fields), &edits);
        check_zip(&bytes, if train { Split::Train } else { Split::Test })?;
    }

    #[test]
    fn zip_arbitrary_bytes_after_the_signature(
        empty_zip in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        // The signature makes the reader take the zip path, so the zip parser sees the rest.
        let mut bytes = if empty_zip { b"PK\x05\x06".to_vec() } else { b"PK\x03\x04".to_vec() };
        bytes.extend_from_slice(&tail);
        check_zip(&bytes, Split::Train)?;
    }
}

/// The unedited inputs pass, so the properties above are not vacuous.
#[test]
fn unedited_samples_parse() {
    for (head, labelled) in sample_heads().iter().zip([true, false]) {
        let ds = parse_csv(head, "head.csv").unwrap();
        assert_eq!((ds.len(), ds.labels.is_some()), (3, labelled));
        assert_eq!(reference(head).map(|(l, rows)| (l, rows.len())), Ok((labelled, 3)));
    }
    for deflate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.zip");
        std::fs::write(&path, sample_zip_bytes(deflate)).unwrap();
        assert_eq!(load(&path, Split::Train).unwrap().len(), 3);
        assert_eq!(load(&path, Split::Test).unwrap().len(), 3);
    }
}

// --- plain regressions for what the properties found ----------------------------------------

/// A header error quoted the whole offending column: a file without newlines (a binary file,
/// a wrong download) is all header, and its message was as long as the file.
#[test]
fn header_error_quotes_at_most_40_bytes() {
    let junk = vec![b'x'; 100_000];
    let msg = parse_csv(&junk, "junk.csv").unwrap_err().to_string();
    assert!(msg.starts_with("junk.csv:1: bad header: column 1 is \"xxxx"), "{msg:.200}");
    assert!(msg.len() < 300, "{}-byte message", msg.len());
}

/// A header of commas was collected into one slice per field: 16 bytes per input byte.
#[test]
fn header_of_commas_allocates_nothing_per_field() {
    let commas = vec![b','; 100_000];
    let (got, largest) = largest_allocation(|| parse_csv(&commas, "commas.csv"));
    assert!(matches!(got, Err(DataError::Header { line: 1, .. })), "{got:?}");
    assert!(largest < 64 << 10, "{largest} bytes");
}

/// A `\r` before a comma was dropped from the quoted value as if it ended the line: the label
/// `0\r` was reported as "label 0 out of range 0..=9", the pixel `5\r` as `"5"`.
#[test]
fn carriage_return_before_a_comma_is_part_of_the_value() {
    // (train or test head, line, its first column, that column's largest value)
    for (head, line, first, max) in [(0, 2, "label", 9), (1, 4, "pixel0", 255)] {
        let head = String::from_utf8(sample_heads()[head].clone()).unwrap();
        let mut lines: Vec<String> = head.lines().map(str::to_string).collect();
        lines[line - 1] = lines[line - 1].replacen(',', "\r,", 1);
        let e = parse_csv(lines.join("\n").as_bytes(), "cr.csv").unwrap_err();
        assert!(
            matches!(&e, DataError::BadValue { line: l, column, value, max: m, .. }
                if *l == line && column == first && value.ends_with('\r') && *m == max),
            "{e:?}"
        );
    }
}

/// An entry whose size field claims 4 GiB made the reader reserve 1 GiB before reading a byte.
#[test]
fn zip_size_field_is_not_trusted_beyond_the_archive() {
    let mut bytes = sample_zip_bytes(false).to_vec();
    // The uncompressed size of every header (local and central) set to u32::MAX.
    for at in 0..bytes.len() - 4 {
        let size_at = match &bytes[at..at + 4] {
            b"PK\x03\x04" => at + 22,
            b"PK\x01\x02" => at + 24,
            _ => continue,
        };
        bytes[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims-4gib.zip");
    std::fs::write(&path, &bytes).unwrap();
    let (got, largest) = largest_allocation(|| load(&path, Split::Train));
    // Stored entries are read by their compressed size, so this one still loads.
    assert_eq!(got.unwrap().len(), 3);
    assert!(largest <= zip_budget(bytes.len()), "{largest} bytes for a {}-byte zip", bytes.len());
}
