//! Every kind of bad input gives an error naming the file, line and column; good variants
//! (CRLF, no trailing newline, BOM) are accepted.

mod common;

use std::error::Error as _;

use common::{csv, header, row, set_field};
use data::{load, load_csv, parse_csv, DataError, Rng, Split};

fn parse_err(text: &str) -> String {
    match parse_csv(text.as_bytes(), "train.csv") {
        Ok(d) => panic!("expected an error, parsed {} rows", d.len()),
        Err(e) => e.to_string(),
    }
}

/// Writes `text` as `<tmp>/train.csv`, loads it via `load_csv`, `load` (CSV path) and `load`
/// (folder), and checks every error message names the file.
fn file_err(text: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.csv");
    std::fs::write(&path, text).unwrap();
    let errs = vec![
        load_csv(&path).unwrap_err().to_string(),
        load(&path, Split::Train).unwrap_err().to_string(),
        load(dir.path(), Split::Train).unwrap_err().to_string(),
    ];
    for e in &errs {
        assert!(e.contains("train.csv"), "no file name in {e:?}");
    }
    errs
}

#[test]
fn wrong_field_count_names_file_and_line() {
    let good = csv(true, 6);
    // Drop the last pixel of data row 3 (line 5 of the file: header is line 1).
    let mut lines: Vec<&str> = good.lines().collect();
    let short = lines[4].rsplit_once(',').unwrap().0.to_string();
    lines[4] = &short;
    let bad = lines.join("\n");
    assert_eq!(parse_err(&bad), "train.csv:5: expected 785 fields, found 784");
    for e in file_err(bad.as_bytes()) {
        assert!(e.ends_with("train.csv:5: expected 785 fields, found 784"), "{e}");
    }
    // One field too many.
    let long = good.replacen(&row(true, 1), &format!("{},0", row(true, 1)), 1);
    assert_eq!(parse_err(&long), "train.csv:3: expected 785 fields, found 786");
    // Unlabelled file given a labelled row.
    let test = csv(false, 3).replacen(&row(false, 2), &row(true, 2), 1);
    assert!(parse_csv(test.as_bytes(), "test.csv")
        .unwrap_err()
        .to_string()
        .contains("test.csv:4: expected 784 fields, found 785"));
}

#[test]
fn non_numeric_pixel() {
    // Data row 15 -> line 17; field 4 is pixel3.
    let bad = set_field(&csv(true, 20), 15, 4, "12a");
    assert_eq!(parse_err(&bad), r#"train.csv:17: column pixel3: "12a" is not an integer in 0..=255"#);
    for e in file_err(bad.as_bytes()) {
        assert!(e.contains("train.csv:17: column pixel3"), "{e}");
    }
    for v in ["", "-1", "+1", " 1", "1 ", "0.0", "1e2", "x", "٣"] {
        let bad = set_field(&csv(true, 3), 1, 10, v);
        let e = parse_err(&bad);
        assert!(e.starts_with("train.csv:3: column pixel9: "), "{v:?}: {e}");
        assert!(e.contains(&format!("{v:?}")), "{v:?}: {e}");
    }
    // Last pixel too (different code path: end of line).
    let bad = set_field(&csv(false, 2), 1, 783, "7z");
    assert!(parse_csv(bad.as_bytes(), "test.csv")
        .unwrap_err()
        .to_string()
        .starts_with(r#"test.csv:3: column pixel783: "7z""#));
}

#[test]
fn pixel_out_of_range() {
    for v in ["256", "1000", "99999999999999999999999"] {
        let bad = set_field(&csv(true, 4), 2, 1, v);
        let e = parse_err(&bad);
        assert_eq!(e, format!("train.csv:4: column pixel0: {v:?} is not an integer in 0..=255"));
    }
    // 255 and zero-padded values are fine.
    let ok = set_field(&set_field(&csv(true, 4), 2, 1, "255"), 3, 784, "007");
    let d = parse_csv(ok.as_bytes(), "train.csv").unwrap();
    assert_eq!(d.image(2)[0], 255);
    assert_eq!(d.image(3)[783], 7);
}

#[test]
fn label_out_of_range() {
    let bad = set_field(&csv(true, 4), 1, 0, "10");
    assert_eq!(parse_err(&bad), "train.csv:3: column label: label 10 out of range 0..=9");
    for e in file_err(bad.as_bytes()) {
        assert!(e.contains("train.csv:3") && e.contains("label 10 out of range 0..=9"), "{e}");
    }
    let bad = set_field(&csv(true, 4), 0, 0, "300");
    assert!(parse_err(&bad).contains("train.csv:2: column label: label 300 out of range"));
    let bad = set_field(&csv(true, 4), 0, 0, "a");
    assert_eq!(parse_err(&bad), r#"train.csv:2: column label: "a" is not an integer in 0..=9"#);
}

#[test]
fn empty_and_header_only_files() {
    assert_eq!(parse_err(""), "train.csv: file is empty");
    assert_eq!(parse_err("\n\r\n"), "train.csv: file is empty");
    for e in file_err(b"") {
        assert!(e.ends_with("train.csv: file is empty"), "{e}");
    }
    let e = parse_err(&(header(true) + "\n"));
    assert!(e.contains("train.csv") && e.contains("no data rows"), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.csv");
    let e = load_csv(&missing).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }));
    assert_eq!(e.to_string(), format!("no such file: {}", missing.display()));
    let e = load(&dir.path().join("nope.zip"), Split::Train).unwrap_err();
    assert!(e.to_string().contains("nope.zip"), "{e}");
    // A folder without train.csv names the expected file inside it.
    let e = load(dir.path(), Split::Train).unwrap_err();
    assert_eq!(e.to_string(), format!("no such file: {}", dir.path().join("train.csv").display()));
    // A zip without the entry.
    let zip_path = dir.path().join("only-test.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        w.start_file("test.csv", zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut w, csv(false, 2).as_bytes()).unwrap();
        w.finish().unwrap();
    }
    let e = load(&zip_path, Split::Train).unwrap_err().to_string();
    assert!(e.contains("only-test.zip") && e.contains("train.csv"), "{e}");
    assert_eq!(load(&zip_path, Split::Test).unwrap().len(), 2);
}

#[test]
fn wrong_header() {
    let good = csv(true, 2);
    let cases = [
        good.replacen("label,", "Label,", 1),
        good.replacen("pixel3,", "pixel03,", 1),
        good.replacen(",pixel783", "", 1),
        good.replacen("pixel783", "pixel783,pixel784", 1),
        good.replacen("label,pixel0,", "0,1,", 1),
        good.replacen("label,", "label ,", 1),
    ];
    for bad in &cases {
        let e = parse_err(bad);
        assert!(e.starts_with("train.csv:1: bad header"), "{e}");
    }
    for e in file_err(cases[0].as_bytes()) {
        assert!(e.contains("train.csv:1: bad header"), "{e}");
    }
    // A headerless file (data where the header should be) is rejected too.
    let headerless = good.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(parse_err(&headerless).starts_with("train.csv:1: bad header"));
}

#[test]
fn training_split_must_be_labelled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.csv"), csv(false, 2)).unwrap();
    let e = load(dir.path(), Split::Train).unwrap_err().to_string();
    assert!(e.contains("train.csv") && e.contains("no label column"), "{e}");
}

#[test]
fn blank_line_in_the_middle() {
    let good = csv(true, 4);
    let bad = good.replacen(&format!("{}\n", row(true, 1)), &format!("{}\n\n", row(true, 1)), 1);
    assert_eq!(parse_err(&bad), "train.csv:4: expected 785 fields, found 0");
}

#[test]
fn accepted_variants_parse_identically() {
    let lf = csv(true, 5);
    let want = parse_csv(lf.as_bytes(), "x").unwrap();
    assert_eq!(want.len(), 5);
    let variants = [
        lf.replace('\n', "\r\n"),
        lf.trim_end().to_string(),
        lf.replace('\n', "\r\n").trim_end().to_string(),
        format!("\u{feff}{lf}"),
        format!("{lf}\n\n"),
    ];
    for v in &variants {
        let got = parse_csv(v.as_bytes(), "x").unwrap();
        assert_eq!(got, want);
    }
    // The values themselves come through.
    let d = parse_csv(lf.as_bytes(), "x").unwrap();
    let expect: Vec<u8> = row(true, 3).split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(d.label(3), Some(expect[0]));
    assert_eq!(d.image(3), &expect[1..]);
}

/// Big enough (> 1 MiB) that the parser splits it across threads: an error deep in a
/// later chunk must still report the right line, and the rows must come out in order.
#[test]
fn multithreaded_parse_keeps_order_and_line_numbers() {
    let n = 3000;
    let good = csv(true, n);
    assert!(good.len() > 4 << 20);
    let d = parse_csv(good.as_bytes(), "big.csv").unwrap();
    assert_eq!(d.len(), n);
    for i in [0, 1, 1499, 1500, 2999] {
        let expect: Vec<u8> = row(true, i).split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(d.label(i), Some(expect[0]), "row {i}");
        assert_eq!(d.image(i), &expect[1..], "row {i}");
    }
    for bad_row in [0, 1234, 2500, n - 1] {
        let bad = set_field(&good, bad_row, 700, "x");
        let e = parse_csv(bad.as_bytes(), "big.csv").unwrap_err().to_string();
        assert_eq!(e, format!(r#"big.csv:{}: column pixel699: "x" is not an integer in 0..=255"#, bad_row + 2));
    }
    // Two errors: the earlier line wins.
    let bad = set_field(&set_field(&good, 2900, 5, "x"), 100, 5, "y");
    assert!(parse_csv(bad.as_bytes(), "big.csv").unwrap_err().to_string().starts_with("big.csv:102:"));
}

#[test]
fn corrupt_zip_keeps_its_source_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digit-recognizer.zip");
    std::fs::write(&path, b"PK\x03\x04 this is not really a zip archive").unwrap();
    let e = load(&path, Split::Train).unwrap_err();
    assert!(matches!(e, DataError::Zip { .. }), "{e:?}");
    assert!(e.to_string().contains("digit-recognizer.zip"));
    assert!(e.source().is_some(), "zip error kept as source");
}

#[test]
fn io_errors_keep_their_source() {
    // Reading a folder as a CSV file fails with an io error (EISDIR), not NotFound.
    let dir = tempfile::tempdir().unwrap();
    let e = load_csv(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(e.source().is_some());
    assert!(e.to_string().contains(&dir.path().display().to_string()));
}

/// Random corruption of a valid file never panics; it parses or returns an error that
/// names the file.
#[test]
fn mutated_input_never_panics() {
    let base = csv(true, 3).into_bytes();
    let alphabet = b"0123456789,\r\n a-";
    let mut rng = Rng::new(7);
    for _ in 0..3000 {
        let mut bytes = base.clone();
        for _ in 0..=rng.below(4) {
            let i = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes[i] = alphabet[rng.below(alphabet.len() as u64) as usize],
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[rng.below(alphabet.len() as u64) as usize]),
            }
        }
        if let Err(e) = parse_csv(&bytes, "m.csv") {
            assert!(e.to_string().starts_with("m.csv"), "{e}");
        }
    }
}
