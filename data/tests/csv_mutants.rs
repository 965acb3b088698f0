//! Rules of the CSV parser that its other tests left unpinned (cargo mutants on
//! `data/src/csv.rs`: changing them broke no test). Each test names the change it catches.

mod common;

use common::{csv, header, row};
use data::{parse_csv, DataError, PIXELS};

/// One valid file of `rows` rows whose row `at` (0-based) is replaced by `line`, with
/// `eol` line ends.
fn with_row(labelled: bool, rows: usize, at: usize, line: &str, eol: &str) -> String {
    let mut lines: Vec<String> = vec![header(labelled)];
    lines.extend((0..rows).map(|i| row(labelled, i)));
    lines[at + 1] = line.to_string();
    lines.join(eol) + eol
}

/// Row `i` with its last pixel set to `0`.
fn row_ending_in_zero(labelled: bool, i: usize) -> String {
    let r = row(labelled, i);
    let cut = r.rfind(',').expect("a row has commas");
    format!("{},0", &r[..cut])
}

/// The line, column and quoted value of the `BadValue` error `text` must give.
fn bad_value(text: &str) -> (usize, String, String) {
    match parse_csv(text.as_bytes(), "t.csv") {
        Err(DataError::BadValue { line, column, value, .. }) => (line, column, value),
        other => panic!("expected a bad value: {other:?}"),
    }
}

/// The `"0,"` fast path is for fields before the last: a last pixel `0` followed by a comma is
/// one field too many on that line, not a row that ends early and a next row that starts
/// mid-line (the fast path taken at the last field reported the next line, or nothing).
#[test]
fn a_comma_after_a_last_zero_is_one_field_too_many_on_that_line() {
    for labelled in [true, false] {
        let fields = PIXELS + usize::from(labelled);
        for extra in [",", ",0", ",5"] {
            let line = row_ending_in_zero(labelled, 1) + extra;
            let text = with_row(labelled, 3, 1, &line, "\n");
            match parse_csv(text.as_bytes(), "t.csv") {
                Err(DataError::FieldCount { line: 3, expected, found, .. }) => {
                    assert_eq!((expected, found), (fields, fields + 1), "{extra:?}")
                }
                other => panic!("{labelled} {extra:?}: {other:?}"),
            }
        }
        // The same row without the extra field is fine.
        let ok = with_row(labelled, 3, 1, &row_ending_in_zero(labelled, 1), "\n");
        assert_eq!(parse_csv(ok.as_bytes(), "t.csv").unwrap().len(), 3);
    }
}

/// A bad last field before a CRLF is quoted without the `\r` of the line end (and a bad
/// field before a comma keeps its own `\r`, see fuzz.rs): the value is cut with the line.
#[test]
fn a_bad_last_field_is_quoted_without_the_crlf() {
    let r = row(false, 0);
    let cut = r.rfind(',').expect("a row has commas");
    let line = format!("{},25x", &r[..cut]);
    let text = with_row(false, 2, 0, &line, "\r\n");
    assert_eq!(bad_value(&text), (2, "pixel783".into(), "25x".into()));
    // A CRLF file without the bad field parses.
    assert_eq!(parse_csv(csv(false, 2).replace('\n', "\r\n").as_bytes(), "crlf.csv").unwrap().len(), 2);
}

/// After the last field only `\n` or `\r\n` end a row: `\r` followed by anything else is part
/// of a bad value on that line (treating any `\r?` as a line end skipped the next byte and
/// misplaced the error).
#[test]
fn a_lone_carriage_return_after_the_last_field_is_a_bad_value() {
    for labelled in [true, false] {
        let line = row_ending_in_zero(labelled, 0) + "\rx";
        let text = with_row(labelled, 2, 0, &line, "\n");
        assert_eq!(bad_value(&text), (2, "pixel783".into(), "0\rx".into()), "{labelled}");
    }
}
