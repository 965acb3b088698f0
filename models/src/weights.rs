//! A checkpoint's tensors: named f32 tensors with their shapes, read from and written to
//! safetensors, and checked against a [`Graph`]'s parameters. The one reader and writer of
//! weight files: the trainer converts its tch tensors to and from [`Weights`] at its edge, the
//! exporter lowers them directly.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};

use crate::{Graph, ModelsError};

/// PyTorch's BatchNorm step counter: in torchvision state_dicts (as int64) but never used by a
/// lowering, so a file saved from PyTorch may carry it; readers skip it.
pub const IGNORED_SUFFIX: &str = ".num_batches_tracked";

/// At most this many names per kind of problem, so a completely wrong file gives a readable error.
const MAX_LISTED: usize = 20;

/// One float32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Which stored element types a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Only F32: what checkpoints hold; anything else means a foreign or damaged file.
    F32,
    /// F32, F64, F16 and BF16, converted to f32: state_dicts saved in other precisions
    /// (`--pretrained`).
    AnyFloat,
}

/// The named tensors of a checkpoint (`state_dict` keys to values), in name order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    /// Where they came from (a path, or a description), for error messages.
    origin: String,
}

impl Weights {
    /// An empty set; `origin` names the source in error messages.
    pub fn new(origin: impl Into<String>) -> Self {
        Weights { tensors: BTreeMap::new(), origin: origin.into() }
    }

    /// Adds (or replaces) a tensor; `data` must hold exactly the product of `shape` values.
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<(), ModelsError> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ModelsError::TensorLength { name, shape, expected, found: data.len() });
        }
        self.tensors.insert(name, Tensor { shape, data });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Parses a safetensors buffer (float32 tensors only); `origin` names it in errors.
    pub fn from_safetensors(bytes: &[u8], origin: &str) -> Result<Self, ModelsError> {
        Self::from_safetensors_accepting(bytes, origin, Accept::F32)
    }

    /// Parses a safetensors buffer, converting the element types `accept` allows to f32.
    pub fn from_safetensors_accepting(bytes: &[u8], origin: &str, accept: Accept) -> Result<Self, ModelsError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|source| ModelsError::Safetensors { path: origin.to_string(), source })?;
        let mut w = Weights::new(origin);
        // Name order: the first bad tensor reported is the same every time.
        let mut names = st.names();
        names.sort_unstable();
        for name in names.into_iter().filter(|n| !n.ends_with(IGNORED_SUFFIX)) {
            let view =
                st.tensor(name).map_err(|source| ModelsError::Safetensors { path: origin.to_string(), source })?;
            let data = to_f32(view.dtype(), view.data(), accept).ok_or_else(|| ModelsError::TensorDtype {
                path: origin.to_string(),
                tensor: name.to_string(),
                dtype: view.dtype(),
                expected: match accept {
                    Accept::F32 => "float32 (F32)",
                    Accept::AnyFloat => "a float type",
                },
            })?;
            w.insert(name, view.shape().to_vec(), data)?;
        }
        Ok(w)
    }

    /// Reads a `.safetensors` file of float32 tensors.
    pub fn read(path: &Path) -> Result<Self, ModelsError> {
        Self::read_accepting(path, Accept::F32)
    }

    /// Reads a `.safetensors` file, converting the element types `accept` allows to f32.
    pub fn read_accepting(path: &Path, accept: Accept) -> Result<Self, ModelsError> {
        if !path.is_file() {
            return Err(ModelsError::WeightsNotFound(path.to_path_buf()));
        }
        let bytes =
            std::fs::read(path).map_err(|source| ModelsError::ReadWeights { path: path.to_path_buf(), source })?;
        Self::from_safetensors_accepting(&bytes, &path.display().to_string(), accept)
    }

    /// The safetensors bytes of every tensor as F32, without metadata. safetensors orders
    /// tensors by name, so equal weights always give equal bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelsError> {
        safetensors::serialize(self.tensors.iter().map(|(k, t)| (k.as_str(), F32View(t))), None)
            .map_err(|source| ModelsError::SerializeWeights { origin: self.origin.clone(), source })
    }

    /// Writes [`Weights::to_safetensors`] to `path` atomically: a reader never sees a
    /// truncated file, and on error `path` is left as it was.
    pub fn write(&self, path: &Path) -> Result<(), ModelsError> {
        let bytes = self.to_safetensors()?;
        data::atomic_write(path, &bytes)
            .map_err(|source| ModelsError::WriteWeights { path: path.to_path_buf(), source: Box::new(source) })
    }

    /// Checks that every parameter of `graph` is present with its shape and that nothing else
    /// is (an extra tensor usually means weights of another architecture, named `arch` in the
    /// error); the error lists all problems at once.
    pub fn check(&self, graph: &Graph, arch: &str) -> Result<(), ModelsError> {
        let specs = graph.params();
        let mut missing = Vec::new();
        let mut wrong_shape = Vec::new();
        for p in &specs {
            match self.tensors.get(&p.name) {
                None => missing.push(p.name.clone()),
                Some(t) if t.shape != p.shape => wrong_shape.push(ShapeMismatch {
                    name: p.name.clone(),
                    expected: p.shape.clone(),
                    found: t.shape.clone(),
                }),
                Some(_) => {}
            }
        }
        let expected: HashSet<&str> = specs.iter().map(|p| p.name.as_str()).collect();
        let unexpected: Vec<String> = self.tensors.keys().filter(|k| !expected.contains(k.as_str())).cloned().collect();
        if missing.is_empty() && wrong_shape.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        Err(ModelsError::WeightsMismatch(Box::new(WeightsMismatch {
            path: self.origin.clone(),
            arch: arch.to_string(),
            missing,
            wrong_shape,
            unexpected,
        })))
    }
}

/// `bytes` (little-endian, as safetensors stores them) as f32, if `accept` allows `dtype`.
fn to_f32(dtype: Dtype, bytes: &[u8], accept: Accept) -> Option<Vec<f32>> {
    // chunks_exact: no alignment assumption about the buffer.
    let f32s = || bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    match (dtype, accept) {
        (Dtype::F32, _) => Some(f32s()),
        (Dtype::F64, Accept::AnyFloat) => Some(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
        ),
        (Dtype::F16, Accept::AnyFloat) => {
            Some(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
        }
        (Dtype::BF16, Accept::AnyFloat) => {
            Some(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
        }
        _ => None,
    }
}

/// A [`Tensor`] as the safetensors writer sees it.
struct F32View<'a>(&'a Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// A tensor whose shape differs from what the architecture expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} has shape {:?}, expected {:?}", self.name, self.found, self.expected)
    }
}

/// How a file's tensors differ from the architecture's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsMismatch {
    /// Where the weights came from (the safetensors path, or a description).
    pub path: String,
    pub arch: String,
    pub missing: Vec<String>,
    pub wrong_shape: Vec<ShapeMismatch>,
    pub unexpected: Vec<String>,
}

impl fmt::Display for WeightsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arch = if self.arch.is_empty() { "the graph" } else { &self.arch };
        let parts: Vec<String> =
            [list("missing ", &self.missing), list("unexpected ", &self.unexpected), list("", &self.wrong_shape)]
                .into_iter()
                .flatten()
                .collect();
        write!(f, "{} does not match {arch}: {}", self.path, parts.join("; "))
    }
}

/// `what` and the first [`MAX_LISTED`] items, with the count when some are left out.
fn list<T: fmt::Display>(what: &str, items: &[T]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let shown: Vec<String> = items.iter().take(MAX_LISTED).map(ToString::to_string).collect();
    let more = if items.len() > MAX_LISTED { format!(", ... ({} in all)", items.len()) } else { String::new() };
    Some(format!("{what}{}{more}", shown.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, Arch, ModelConfig};

    fn weights_of(graph: &Graph) -> Weights {
        let mut w = Weights::new("test.safetensors");
        for (i, p) in graph.params().into_iter().enumerate() {
            let n = p.shape.iter().product();
            w.insert(p.name, p.shape, (0..n).map(|j| (i * 7 + j) as f32 * 0.25 - 3.0).collect()).unwrap();
        }
        w
    }

    #[test]
    fn round_trips_through_safetensors_and_matches_its_graph() {
        let graph = build(&ModelConfig::new(Arch::M5)).unwrap();
        let w = weights_of(&graph);
        let bytes = w.to_safetensors().unwrap();
        let back = Weights::from_safetensors(&bytes, "test.safetensors").unwrap();
        assert_eq!(back, w);
        back.check(&graph, "m5").unwrap();
        // Names, not insertion order, decide the bytes.
        let mut reversed = Weights::new("r");
        for (k, t) in w.iter().collect::<Vec<_>>().into_iter().rev() {
            reversed.insert(k, t.shape.clone(), t.data.clone()).unwrap();
        }
        assert_eq!(reversed.to_safetensors().unwrap(), bytes);
    }

    #[test]
    fn a_mismatch_names_file_arch_and_every_kind_of_problem() {
        let graph = build(&ModelConfig::new(Arch::M5)).unwrap();
        let mut w = weights_of(&graph);
        w.tensors.remove("conv1.weight");
        w.insert("fc.weight", vec![2], vec![0.0, 1.0]).unwrap();
        w.insert("stray", vec![1], vec![0.0]).unwrap();
        let msg = w.check(&graph, "m5").unwrap_err().to_string();
        assert_eq!(
            msg,
            "test.safetensors does not match m5: missing conv1.weight; unexpected stray; \
             fc.weight has shape [2], expected [10, 10240]"
        );
    }

    #[test]
    fn long_lists_are_cut_with_a_count() {
        let items: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
        let s = list("missing ", &items).unwrap();
        assert!(s.starts_with("missing t0, t1,") && s.ends_with("t19, ... (25 in all)"), "{s}");
    }

    #[test]
    fn other_dtypes_are_refused_or_converted_as_asked() {
        let f64s: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16s: Vec<u8> = [half::bf16::from_f32(0.5)].iter().flat_map(|v| v.to_le_bytes()).collect();
        let counter = 7i64.to_le_bytes();
        let views = [
            ("a", safetensors::tensor::TensorView::new(Dtype::F64, vec![2], &f64s).unwrap()),
            ("b", safetensors::tensor::TensorView::new(Dtype::BF16, vec![1], &bf16s).unwrap()),
            ("bn.num_batches_tracked", safetensors::tensor::TensorView::new(Dtype::I64, vec![], &counter).unwrap()),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        let err = Weights::from_safetensors(&bytes, "x.safetensors").unwrap_err().to_string();
        assert!(err.contains("x.safetensors") && err.contains("\"a\"") && err.contains("F64"), "{err}");
        let w = Weights::from_safetensors_accepting(&bytes, "x", Accept::AnyFloat).unwrap();
        assert_eq!(w.get("a").unwrap().data, [1.5, -2.0]);
        assert_eq!(w.get("b").unwrap().data, [0.5]);
        assert_eq!(w.len(), 2, "the BatchNorm counter is skipped");
    }
}
