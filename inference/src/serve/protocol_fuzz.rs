//! Property tests of the request decoders against bodies no client should send: arbitrary
//! bytes, valid Open Inference Protocol v2 requests (JSON and binary-tensor) with random byte
//! edits or extreme field values, and `/predict` bodies. A decoder must never panic, never
//! make an allocation out of proportion to the body (a shape claiming 2^60 images is refused,
//! not trusted), return only consistent images, and name the field its error is about.
//!
//! The decoders are crate-private, hence a unit-test module rather than an integration test.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde_json::{json, Value};

use super::protocol::{decode_predict, decode_v2, Images, HEADER_LENGTH};
use super::ServeError;
use crate::PIXELS;
use largest_alloc::largest_allocation;

// One copy of the counting allocator for both crates' property tests.
#[path = "../../../data/tests/largest_alloc/mod.rs"]
mod largest_alloc;

/// The most a body of `len` bytes may make the decoder allocate at once: one UINT8 byte
/// becomes an f64 (8 bytes) while it is checked, plus fixed-size buffers.
fn budget(len: usize) -> usize {
    8 * len + (64 << 10)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // A failure is reported with its input; nothing is written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Decoded images are exactly `n` whole images of model input (pixel/255), and no more
/// than the body could carry (at least one byte per value).
fn check_images(images: &Images, body_len: usize) -> Result<(), TestCaseError> {
    prop_assert!(images.n >= 1);
    prop_assert_eq!(Some(images.input.len()), images.n.checked_mul(PIXELS));
    prop_assert!(images.input.len() <= body_len, "{} values from {body_len} bytes", images.input.len());
    prop_assert!(images.input.iter().all(|v| (0.0..=1.0).contains(v)));
    Ok(())
}

/// Words by which a v2 error names what it is about: a request field, the header, or the
/// JSON position of a syntax error.
const V2_FIELDS: [&str; 7] = ["input", "output", "shape", "datatype", "binary", "parameter", HEADER_LENGTH];

fn check_error(e: &ServeError, body_len: usize, fields: &[&str]) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(matches!(e, ServeError::BadRequest(_) | ServeError::UnsupportedMediaType { .. }), "{e:?}");
    let positioned = msg.contains(" line ") && msg.contains(" column ");
    prop_assert!(positioned || fields.iter().any(|f| msg.contains(f)), "names no field: {msg}");
    // Messages quote request text (names, values) but never more than the body holds.
    prop_assert!(msg.len() <= body_len + 400, "{}-byte message", msg.len());
    Ok(())
}

/// Runs `decode` on `body`: its largest allocation stays within the budget, its images are
/// consistent (`check_ok` checks the rest) and its error names one of `fields`.
fn check_decoder<T>(
    body: &[u8],
    decode: impl FnOnce() -> Result<T, ServeError>,
    check_ok: impl FnOnce(T) -> Result<(), TestCaseError>,
    fields: &[&str],
) -> Result<(), TestCaseError> {
    let (got, largest) = largest_allocation(decode);
    prop_assert!(largest <= budget(body.len()), "allocated {largest} bytes at once for a {}-byte body", body.len());
    match got {
        Ok(decoded) => check_ok(decoded),
        Err(e) => check_error(&e, body.len(), fields),
    }
}

fn check_v2(body: &[u8], header_length: Option<usize>) -> Result<(), TestCaseError> {
    let check_ok = |req: super::protocol::V2Request| {
        check_images(&req.images, body.len())?;
        prop_assert!(!req.outputs.is_empty());
        Ok(())
    };
    check_decoder(body, || decode_v2(body, header_length), check_ok, &V2_FIELDS)
}

/// JSON errors name `pixels[i]`, CSV errors the line (and column) of the body.
const PREDICT_FIELDS: [&str; 6] = ["pixels", "line", "row", "request body", "no images", "content type"];

fn check_predict(content_type: &str, body: &[u8]) -> Result<(), TestCaseError> {
    let check_ok = |images: Images| check_images(&images, body.len());
    check_decoder(body, || decode_predict(content_type, body), check_ok, &PREDICT_FIELDS)
}

// --- requests -----------------------------------------------------------------------------

fn pixel(i: usize) -> u8 {
    (i * 37 % 256) as u8
}

/// A valid v2 request body and its header length (binary-tensor extension when set).
#[derive(Debug, Clone)]
struct V2 {
    json: Value,
    binary: Vec<u8>,
}

impl V2 {
    fn body(&self) -> (Vec<u8>, Option<usize>) {
        let mut body = serde_json::to_vec(&self.json).expect("a JSON value serialises");
        let len = body.len();
        if self.binary.is_empty() {
            return (body, None);
        }
        body.extend_from_slice(&self.binary);
        (body, Some(len))
    }
}

prop_compose! {
    fn valid_v2()(
        n in 1..3usize,
        fp32 in any::<bool>(),
        image_shape in any::<bool>(),
        nested in any::<bool>(),
        binary_in in any::<bool>(),
        outputs in 0..4u8,
        binary_out in any::<bool>(),
        id in any::<bool>(),
    ) -> V2 {
        v2_request(n, fp32, image_shape, nested, binary_in, outputs, binary_out, id)
    }
}

/// A valid request for `n` images; the flags choose its form (see [`valid_v2`]).
#[allow(clippy::too_many_arguments)] // one per independent choice of the strategy
fn v2_request(
    n: usize,
    fp32: bool,
    image_shape: bool,
    nested: bool,
    binary_in: bool,
    outputs: u8,
    binary_out: bool,
    id: bool,
) -> V2 {
    let values = n * PIXELS;
    let shape = if image_shape { json!([n, 1, 28, 28]) } else { json!([n, PIXELS]) };
    let mut input = json!({ "name": "input", "shape": shape, "datatype": if fp32 { "FP32" } else { "UINT8" } });
    let mut binary = Vec::new();
    if binary_in {
        for i in 0..values {
            if fp32 {
                binary.extend_from_slice(&(f32::from(pixel(i)) / 255.0).to_le_bytes());
            } else {
                binary.push(pixel(i));
            }
        }
        input["parameters"] = json!({ "binary_data_size": binary.len() });
    } else {
        let flat: Vec<Value> =
            (0..values).map(|i| if fp32 { json!(f64::from(pixel(i)) / 255.0) } else { json!(pixel(i)) }).collect();
        input["data"] = if nested {
            Value::Array(flat.chunks(PIXELS).map(|c| Value::Array(c.to_vec())).collect())
        } else {
            Value::Array(flat)
        };
    }
    let mut json = json!({ "inputs": [input] });
    match outputs {
        0 => {}
        1 => json["outputs"] = json!([{ "name": "label" }]),
        2 => json["outputs"] = json!([{ "name": "probabilities", "parameters": { "binary_data": binary_out } }]),
        _ => json["parameters"] = json!({ "binary_data_output": binary_out }),
    }
    if id {
        json["id"] = json!("req-1");
    }
    V2 { json, binary }
}

/// Values chosen to break arithmetic: extremes, and counts that wrap to small ones when
/// multiplied by 784 (2^60 + 1 times 784 is 784 modulo 2^64).
fn wild_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            -1,
            1,
            2,
            28,
            784,
            1 << 32,
            1 << 60,
            (1 << 60) + 1,
            (1 << 62) + 2,
            i64::MAX,
            i64::MIN
        ]),
        any::<i64>(),
    ]
}

fn wild_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        wild_i64().prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        prop::sample::select(vec![
            json!(-1),
            json!(0.5),
            json!(1e300),
            json!(-0.0),
            json!("8"),
            json!(null),
            json!(true),
            json!([]),
            json!({})
        ]),
    ]
}

/// One field of a valid request replaced by an extreme or ill-typed value.
#[derive(Debug, Clone)]
enum FieldEdit {
    Shape(Vec<i64>),
    BatchOf784(i64),
    BatchOf1x28x28(i64),
    BinarySize(Value),
    Datatype(String),
    Data(Value),
    HeaderLength(usize),
    DropHeaderLength,
    Outputs(Value),
    Parameters(Value),
    InputName(String),
}

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    prop_oneof![
        prop::collection::vec(wild_i64(), 0..6).prop_map(FieldEdit::Shape),
        wild_i64().prop_map(FieldEdit::BatchOf784),
        wild_i64().prop_map(FieldEdit::BatchOf1x28x28),
        wild_value().prop_map(FieldEdit::BinarySize),
        prop::sample::select(vec!["FP16", "INT64", "BYTES", "fp32", "", "UINT8 "])
            .prop_map(|s| FieldEdit::Datatype(s.into())),
        prop_oneof![wild_value(), prop::collection::vec(wild_value(), 0..4).prop_map(Value::Array)]
            .prop_map(FieldEdit::Data),
        (0..20_000usize).prop_map(FieldEdit::HeaderLength),
        Just(FieldEdit::DropHeaderLength),
        wild_value().prop_map(FieldEdit::Outputs),
        prop_oneof![wild_value(), wild_value().prop_map(|v| json!({ "binary_data_output": v }))]
            .prop_map(FieldEdit::Parameters),
        prop::sample::select(vec!["", "Input", "input ", "probabilities"]).prop_map(|s| FieldEdit::InputName(s.into())),
    ]
}

fn apply_field(v2: &V2, edit: &FieldEdit) -> (Vec<u8>, Option<usize>) {
    let mut v2 = v2.clone();
    let input = &mut v2.json["inputs"][0];
    match edit {
        FieldEdit::Shape(s) => input["shape"] = json!(s),
        FieldEdit::BatchOf784(n) => input["shape"] = json!([n, PIXELS]),
        FieldEdit::BatchOf1x28x28(n) => input["shape"] = json!([n, 1, 28, 28]),
        FieldEdit::BinarySize(v) => input["parameters"]["binary_data_size"] = v.clone(),
        FieldEdit::Datatype(d) => input["datatype"] = json!(d),
        FieldEdit::Data(v) => input["data"] = v.clone(),
        FieldEdit::InputName(name) => input["name"] = json!(name),
        FieldEdit::Outputs(v) => v2.json["outputs"] = v.clone(),
        FieldEdit::Parameters(v) => v2.json["parameters"] = v.clone(),
        FieldEdit::HeaderLength(len) => return (v2.body().0, Some(*len)),
        FieldEdit::DropHeaderLength => return (v2.body().0, None),
    }
    v2.body()
}

/// One random byte edit.
#[derive(Debug, Clone)]
enum ByteEdit {
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Run(Index, u8, usize),
    Truncate(Index),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let byte = prop_oneof![prop::sample::select(b"0123456789[]{},:\"-.e ".to_vec()), any::<u8>()];
    prop_oneof![
        4 => (any::<Index>(), byte.clone()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        2 => (any::<Index>(), byte.clone()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        2 => any::<Index>().prop_map(ByteEdit::Remove),
        1 => (any::<Index>(), byte, 1..4096usize).prop_map(|(i, b, n)| ByteEdit::Run(i, b, n)),
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
    ]
}

fn apply_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        if len == 0 {
            break;
        }
        match e {
            ByteEdit::Set(i, b) => bytes[i.index(len)] = *b,
            ByteEdit::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            ByteEdit::Remove(i) => {
                bytes.remove(i.index(len));
            }
            ByteEdit::Run(i, b, n) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, std::iter::repeat_n(*b, *n));
            }
            ByteEdit::Truncate(i) => bytes.truncate(i.index(len)),
        }
    }
    bytes
}

prop_compose! {
    /// A `/predict` body: JSON rows of pixels or Kaggle CSV rows (with or without a header or
    /// labels), valid before `edits`.
    fn predict_body()(
        json in any::<bool>(),
        rows in 0..3usize,
        header in any::<bool>(),
        label in any::<bool>(),
        edits in prop::collection::vec(byte_edit(), 0..5),
    ) -> (&'static str, Vec<u8>) {
        let (content_type, body) = predict_body_bytes(json, rows, header, label);
        (content_type, apply_bytes(body, &edits))
    }
}

fn predict_body_bytes(json: bool, rows: usize, header: bool, label: bool) -> (&'static str, Vec<u8>) {
    let row = |r: usize| (0..PIXELS).map(move |i| pixel(i + r));
    if json {
        let pixels: Vec<Vec<u8>> = (0..rows).map(|r| row(r).collect()).collect();
        let body = serde_json::to_vec(&json!({ "pixels": pixels })).expect("serialises");
        return ("application/json", body);
    }
    let mut lines = Vec::new();
    let label_column = label.then(|| "label".to_string());
    if header {
        let names = (0..PIXELS).map(|i| format!("pixel{i}"));
        lines.push(label_column.clone().into_iter().chain(names).collect::<Vec<_>>().join(","));
    }
    for r in 0..rows.max(1) {
        let label = label.then(|| (r % 10).to_string());
        lines.push(label.into_iter().chain(row(r).map(|p| p.to_string())).collect::<Vec<_>>().join(","));
    }
    ("text/csv", (lines.join("\n") + "\n").into_bytes())
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn v2_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048), header in prop::option::of(0..2100usize)) {
        check_v2(&body, header)?;
    }

    #[test]
    fn v2_valid_requests_decode(v2 in valid_v2()) {
        let (body, header) = v2.body();
        let req = decode_v2(&body, header).map_err(|e| TestCaseError::fail(format!("{e}: {}", v2.json)))?;
        check_images(&req.images, body.len())?;
    }

    #[test]
    fn v2_mutated_bytes(v2 in valid_v2(), edits in prop::collection::vec(byte_edit(), 1..6), header_shift in -8i64..8) {
        let (body, header) = v2.body();
        let body = apply_bytes(body, &edits);
        // The header length follows the JSON part roughly: edits move the boundary.
        let header = header.map(|h| h.saturating_add_signed(header_shift as isize));
        check_v2(&body, header)?;
    }

    #[test]
    fn v2_extreme_fields(v2 in valid_v2(), edits in prop::collection::vec(field_edit(), 1..3)) {
        let mut current = v2;
        let mut header_override = None;
        for e in &edits {
            let (body, header) = apply_field(&current, e);
            match e {
                FieldEdit::HeaderLength(_) | FieldEdit::DropHeaderLength => header_override = Some(header),
                _ => {
                    // Keep the edited JSON for the next edit; the binary part is unchanged.
                    let json_len = header.unwrap_or(body.len());
                    current.json = serde_json::from_slice(&body[..json_len]).expect("re-parses");
                }
            }
        }
        let (body, header) = current.body();
        check_v2(&body, header_override.unwrap_or(header))?;
    }

    #[test]
    fn predict_arbitrary_bytes(
        content_type in prop::sample::select(vec!["application/json", "text/csv", "text/plain; charset=utf-8", "image/png", ""]),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        check_predict(content_type, &body)?;
    }

    /// Rows of any length, mostly short, sometimes one whole image among them.
    #[test]
    fn predict_json_rows_of_any_length(
        mut rows in prop::collection::vec(prop::collection::vec(0..300i64, 0..3), 0..3000),
        whole in prop::option::of(any::<Index>()),
    ) {
        if let (Some(i), false) = (whole, rows.is_empty()) {
            let k = i.index(rows.len());
            rows[k] = vec![7; PIXELS];
        }
        let body = serde_json::to_vec(&json!({ "pixels": rows })).expect("serialises");
        check_predict("application/json", &body)?;
    }

    #[test]
    fn predict_mutated_bodies((content_type, body) in predict_body()) {
        check_predict(content_type, &body)?;
    }
}

/// Plain regressions for what the properties found.
#[test]
fn a_batch_that_wraps_around_is_refused() {
    // (2^60 + 1) * 784 wraps to 784 in 64 bits: one image's values must not pass for 2^60 + 1.
    let body = json!({ "inputs": [{ "name": "input", "shape": [(1u64 << 60) + 1, PIXELS], "datatype": "UINT8", "data": vec![0; PIXELS] }] });
    let e = decode_v2(&serde_json::to_vec(&body).unwrap(), None).unwrap_err().to_string();
    assert!(e.contains("shape") && e.contains("1152921504606846977"), "{e}");
}

#[test]
fn predict_rows_of_the_wrong_length_allocate_nothing_per_row() {
    // 3 bytes per empty row must not reserve 784 floats per row before the rows are checked.
    let rows = vec!["[]"; 1000].join(",");
    let body = format!("{{\"pixels\": [{rows}]}}");
    let (got, largest) = largest_allocation(|| decode_predict("application/json", body.as_bytes()));
    assert_eq!(got.unwrap_err().to_string(), "pixels[0] has 0 values, expected 784");
    assert!(largest <= budget(body.len()), "{largest} bytes for a {}-byte body", body.len());
}
