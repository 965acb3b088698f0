//! Request bodies in, response bodies out: the Open Inference Protocol v2 (JSON, and
//! Triton's binary-tensor extension that `tritonclient` uses by default) and the simple
//! `/predict` API (JSON pixels or Kaggle CSV rows).

use std::fmt;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::ServeError;
use crate::PIXELS;

/// Header giving the length of the JSON part of a binary-extension body.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// Images decoded from a request, ready for a model: `n * PIXELS` floats, pixel/255.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Images {
    pub input: Vec<f32>,
    pub n: usize,
}

/// Raw pixel to model input, exactly as the offline path converts (`p as f32 / 255.0`).
fn from_u8(p: u8) -> f32 {
    f32::from(p) / 255.0
}

/// Tensor `data`, flattened: v2 allows flat or nested (row-major) arrays.
#[derive(Debug, Default)]
pub(crate) struct FlatNumbers(Vec<f64>);

struct Flatten<'a>(&'a mut Vec<f64>);

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers (flat or nested)")
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f64);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f64);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        while seq.next_element_seed(Flatten(&mut *out))?.is_some() {}
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Deserialize<'de> for FlatNumbers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_seq(Flatten(&mut out))?;
        Ok(FlatNumbers(out))
    }
}

#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<FlatNumbers>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

/// The two outputs every model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputName {
    Label,
    Probabilities,
}

impl OutputName {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "label" => Some(OutputName::Label),
            "probabilities" => Some(OutputName::Probabilities),
            _ => None,
        }
    }
}

/// A decoded v2 inference request.
#[derive(Debug)]
pub(crate) struct V2Request {
    pub id: Option<String>,
    pub images: Images,
    /// Outputs to return, in order, each with whether its data goes in the binary part.
    pub outputs: Vec<(OutputName, bool)>,
}

fn bad(msg: impl Into<String>) -> ServeError {
    ServeError::BadRequest(msg.into())
}

fn flag(params: &Map<String, Value>, key: &str) -> Result<bool, ServeError> {
    match params.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(bad(format!("parameter `{key}` must be true or false, got {v}"))),
    }
}

/// Number of images in a `[N,784]` or `[N,1,28,28]` shape.
fn images_in_shape(shape: &[i64]) -> Result<usize, ServeError> {
    let side = crate::IMAGE_SIDE as i64;
    let tail_ok = match shape {
        [_, p] => *p == PIXELS as i64,
        [_, 1, h, w] => *h == side && *w == side,
        _ => false,
    };
    if !tail_ok {
        return Err(bad(format!("input `input` has shape {shape:?}; expected [N,784] or [N,1,28,28]")));
    }
    match usize::try_from(shape[0]) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad(format!("input `input` has batch size {} in shape {shape:?}; expected N >= 1", shape[0]))),
    }
}

/// Pixels as floats: FP32 must already be pixel/255 in [0, 1], UINT8 is raw 0..=255.
fn convert(values: &[f64], datatype: &str) -> Result<Vec<f32>, ServeError> {
    match datatype {
        "FP32" => values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if (0.0..=1.0).contains(&v) {
                    Ok(v as f32)
                } else {
                    Err(bad(format!("FP32 input value {v} at index {i} is outside [0, 1] (send pixel/255)")))
                }
            })
            .collect(),
        "UINT8" => values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                    Ok(from_u8(v as u8))
                } else {
                    Err(bad(format!("UINT8 input value {v} at index {i} is not an integer in 0..=255")))
                }
            })
            .collect(),
        _ => unreachable!("datatype checked by the caller"),
    }
}

fn binary_values(bytes: &[u8], datatype: &str) -> Result<Vec<f64>, ServeError> {
    match datatype {
        "FP32" => {
            if !bytes.len().is_multiple_of(4) {
                return Err(bad(format!("binary FP32 data has {} bytes, not a multiple of 4", bytes.len())));
            }
            Ok(bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
        }
        _ => Ok(bytes.iter().map(|&b| f64::from(b)).collect()),
    }
}

/// Decodes `POST /v2/models/{name}/infer`. `header_length` is the
/// `Inference-Header-Content-Length` header: the JSON is that many bytes, binary
/// tensors follow.
pub(crate) fn decode_v2(body: &[u8], header_length: Option<usize>) -> Result<V2Request, ServeError> {
    let (json_part, mut binary) = match header_length {
        Some(len) if len > body.len() => {
            return Err(bad(format!("{HEADER_LENGTH} is {len} but the body has only {} bytes", body.len())))
        }
        Some(len) => body.split_at(len),
        None => (body, &body[body.len()..]),
    };
    let req: InferRequest =
        serde_json::from_slice(json_part).map_err(|e| bad(format!("invalid inference request: {e}")))?;
    let [input] = &req.inputs[..] else {
        let names: Vec<&str> = req.inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(bad(format!("expected exactly one input named `input`, got {names:?}")));
    };
    if input.name != "input" {
        return Err(bad(format!("unknown input `{}`; the models take one input named `input`", input.name)));
    }
    if input.datatype != "FP32" && input.datatype != "UINT8" {
        return Err(bad(format!(
            "input datatype {} is not supported; send FP32 (pixel/255) or UINT8 (0..=255)",
            input.datatype
        )));
    }
    let n = images_in_shape(&input.shape)?;
    let values = match (&input.data, input.parameters.get("binary_data_size")) {
        (Some(_), Some(_)) => return Err(bad("input `input` has both `data` and `binary_data_size`")),
        (Some(FlatNumbers(v)), None) => std::borrow::Cow::Borrowed(v),
        (None, Some(size)) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bad(format!("binary_data_size must be a byte count, got {size}")))?;
            if size > binary.len() {
                return Err(bad(format!("binary_data_size {size} exceeds the {} binary bytes sent", binary.len())));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            std::borrow::Cow::Owned(binary_values(mine, &input.datatype)?)
        }
        (None, None) => return Err(bad("input `input` has no `data`")),
    };
    if !binary.is_empty() {
        return Err(bad(format!("{} binary bytes after the tensors", binary.len())));
    }
    // Checked: a batch of 2^62 + 2 would otherwise wrap around to 1568 values.
    if n.checked_mul(PIXELS) != Some(values.len()) {
        return Err(bad(format!(
            "input `input` has {} values but shape {:?} needs {}",
            values.len(),
            input.shape,
            n as u128 * PIXELS as u128
        )));
    }
    let input_f32 = convert(&values, &input.datatype)?;

    let all_binary = flag(&req.parameters, "binary_data_output")?;
    let outputs = match &req.outputs {
        None => vec![(OutputName::Label, all_binary), (OutputName::Probabilities, all_binary)],
        Some(list) if list.is_empty() => return Err(bad("`outputs` is empty; ask for `label` and/or `probabilities`")),
        Some(list) => list
            .iter()
            .map(|o| {
                let name = OutputName::parse(&o.name).ok_or_else(|| {
                    bad(format!("unknown output `{}`; the outputs are `label` and `probabilities`", o.name))
                })?;
                Ok((name, all_binary || flag(&o.parameters, "binary_data")?))
            })
            .collect::<Result<_, ServeError>>()?,
    };
    Ok(V2Request { id: req.id, images: Images { input: input_f32, n }, outputs })
}

/// Labels and class probabilities for the images of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub labels: Vec<u8>,
    /// `labels.len() * classes`, row-major.
    pub probabilities: Vec<f32>,
    pub classes: usize,
}

/// The v2 response: JSON, or JSON followed by binary tensors when any output asked for it.
pub(crate) fn encode_v2(model: &str, req: &V2Request, answer: &Answer) -> Response {
    let n = answer.labels.len();
    let mut outputs = Vec::new();
    let mut binary: Vec<u8> = Vec::new();
    for &(name, as_binary) in &req.outputs {
        let (name, datatype, shape, data, bytes): (&str, &str, Vec<usize>, Value, Vec<u8>) = match name {
            OutputName::Label => (
                "label",
                "INT64",
                vec![n],
                json!(answer.labels),
                answer.labels.iter().flat_map(|&l| i64::from(l).to_le_bytes()).collect(),
            ),
            OutputName::Probabilities => (
                "probabilities",
                "FP32",
                vec![n, answer.classes],
                json!(answer.probabilities),
                answer.probabilities.iter().flat_map(|p| p.to_le_bytes()).collect(),
            ),
        };
        let mut o = json!({ "name": name, "datatype": datatype, "shape": shape });
        if as_binary {
            o["parameters"] = json!({ "binary_data_size": bytes.len() });
            binary.extend_from_slice(&bytes);
        } else {
            o["data"] = data;
        }
        outputs.push(o);
    }
    let mut body = json!({ "model_name": model, "model_version": "1", "outputs": outputs });
    if let Some(id) = &req.id {
        body["id"] = json!(id);
    }
    if binary.is_empty() && req.outputs.iter().all(|o| !o.1) {
        return axum::Json(body).into_response();
    }
    let mut bytes = serde_json::to_vec(&body).expect("a JSON value serialises");
    let json_len = bytes.len();
    bytes.extend_from_slice(&binary);
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    resp
}

#[derive(Debug, Deserialize)]
struct PredictJson {
    pixels: Vec<Vec<i64>>,
}

/// Decodes `POST /predict`: `application/json` `{"pixels": [[784 ints], ...]}`, or
/// `text/csv` Kaggle rows (`pixel0..pixel783`, or `label,pixel0..` whose labels are
/// ignored; the header line may be left out).
pub(crate) fn decode_predict(content_type: &str, body: &[u8]) -> Result<Images, ServeError> {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let images = match mime.as_str() {
        "application/json" => {
            let req: PredictJson = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
            // Lengths first: `[],[],...` must not reserve 784 floats per 3 bytes of body.
            if let Some((i, row)) = req.pixels.iter().enumerate().find(|(_, r)| r.len() != PIXELS) {
                return Err(bad(format!("pixels[{i}] has {} values, expected {PIXELS}", row.len())));
            }
            let mut input = Vec::with_capacity(req.pixels.len() * PIXELS);
            for (i, row) in req.pixels.iter().enumerate() {
                for (j, &p) in row.iter().enumerate() {
                    let p = u8::try_from(p)
                        .map_err(|_| bad(format!("pixels[{i}][{j}] = {p} is not an integer in 0..=255")))?;
                    input.push(from_u8(p));
                }
            }
            Images { input, n: req.pixels.len() }
        }
        "text/csv" | "text/plain" => decode_csv(body)?,
        _ => {
            return Err(ServeError::UnsupportedMediaType {
                found: content_type.to_string(),
                expected: "application/json ({\"pixels\": [[784 ints], ...]}) or text/csv (Kaggle rows)",
            })
        }
    };
    if images.n == 0 {
        return Err(bad("no images in the request"));
    }
    Ok(images)
}

fn decode_csv(body: &[u8]) -> Result<Images, ServeError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let first = body.split(|&b| b == b'\n').next().unwrap_or(b"");
    let has_header = first.starts_with(b"pixel") || first.starts_with(b"label");
    let data = if has_header {
        data::parse_csv(body, "request body")
    } else {
        // Headerless rows: give them the header their field count implies, so the one
        // validating parser reads them (its line numbers then count that header too).
        let fields = first.split(|&b| b == b',').count();
        let mut names: Vec<String> = (0..PIXELS).map(|i| format!("pixel{i}")).collect();
        if fields == PIXELS + 1 {
            names.insert(0, "label".to_string());
        } else if fields != PIXELS {
            return Err(bad(format!(
                "CSV row 1 has {fields} fields; expected {PIXELS} pixels (test.csv) or a label and {PIXELS} pixels"
            )));
        }
        let mut with_header = names.join(",").into_bytes();
        with_header.push(b'\n');
        with_header.extend_from_slice(body);
        data::parse_csv(&with_header, "request body (header line added)")
    }
    .map_err(|e| bad(e.to_string()))?;
    let n = data.len();
    Ok(Images { input: data.images.iter().map(|&p| from_u8(p)).collect(), n })
}
