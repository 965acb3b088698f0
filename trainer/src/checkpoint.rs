//! Checkpoint directories: `model.safetensors` (every [`models::ParamSpec`] tensor, f32, named
//! as torchvision's state_dict) and `config.json` ([`CheckpointMeta`]), both written atomically.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use models::{CheckpointMeta, CHECKPOINT_META_FILE, CHECKPOINT_WEIGHTS_FILE};
use safetensors::{tensor::View, Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::net::{Model, Net};

/// Who wrote a checkpoint, for [`CheckpointMeta::producer`].
pub const PRODUCER: &str = concat!("trainer ", env!("CARGO_PKG_VERSION"));

/// One f32 tensor on the host, ready for the safetensors writer.
struct HostTensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_host(name: &str, t: &Tensor) -> Result<HostTensor> {
    let torch = TrainerError::torch(format!("copying {name} to the host"));
    let flat = t
        .f_detach()
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_flatten(0, -1))
        .map_err(torch)?;
    let values = Vec::<f32>::try_from(&flat).map_err(TrainerError::torch(format!("reading {name}")))?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok(HostTensor { shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() })
}

/// The bytes of a safetensors file holding every state tensor of `net`.
pub fn weights_bytes(net: &Net) -> Result<Vec<u8>> {
    tensors_bytes(net.params().iter().map(|(spec, t)| (spec.name.as_str(), t)))
}

/// The bytes of a safetensors file holding `tensors` as f32 (copied to the host).
pub fn tensors_bytes<'a>(tensors: impl Iterator<Item = (&'a str, &'a Tensor)>) -> Result<Vec<u8>> {
    let host: Vec<(String, HostTensor)> =
        tensors.map(|(name, t)| Ok((name.to_string(), to_host(name, t)?))).collect::<Result<_>>()?;
    safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), None).map_err(|e| TrainerError::Checkpoint {
        path: PathBuf::from(CHECKPOINT_WEIGHTS_FILE),
        message: format!("cannot serialise: {e}"),
    })
}

/// Writes `net`'s weights to `path` (atomically).
pub fn save_weights(path: &Path, net: &Net) -> Result<()> {
    let bytes = weights_bytes(net)?;
    data::atomic_write(path, &bytes)?;
    Ok(())
}

/// Writes `<dir>/model.safetensors` then `<dir>/config.json`, each atomically (a reader never
/// sees a truncated file). `meta.model` must be the config `net` was built from.
pub fn save_checkpoint(dir: &Path, net: &Net, meta: &CheckpointMeta) -> Result<()> {
    if &meta.model != net.config() {
        return Err(TrainerError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("metadata describes {:?} but the network is {:?}", meta.model, net.config()),
        });
    }
    save_weights(&dir.join(CHECKPOINT_WEIGHTS_FILE), net)?;
    crate::fault::point("checkpoint/between_files");
    data::atomic_write(&dir.join(CHECKPOINT_META_FILE), meta.to_json().as_bytes())?;
    Ok(())
}

/// Copies the tensors of the safetensors file at `path` into `net`, after checking that the
/// file holds exactly the network's tensors (names, shapes, f32).
pub fn load_weights(path: &Path, net: &Net) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| TrainerError::Read { path: path.to_path_buf(), source })?;
    let bad = |message: String| TrainerError::Checkpoint { path: path.to_path_buf(), message };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;

    let (mut missing, mut wrong) = (Vec::new(), Vec::new());
    let mut found = Vec::with_capacity(net.params().len());
    for (spec, _) in net.params() {
        match st.tensor(&spec.name) {
            Err(_) => missing.push(spec.name.clone()),
            Ok(view) if view.dtype() != Dtype::F32 => {
                wrong.push(format!("{} is {:?}, expected F32", spec.name, view.dtype()))
            }
            Ok(view) if view.shape() != spec.shape.as_slice() => {
                wrong.push(format!("{} has shape {:?}, expected {:?}", spec.name, view.shape(), spec.shape))
            }
            Ok(view) => found.push(view),
        }
    }
    let expected: std::collections::HashSet<&str> = net.params().iter().map(|(s, _)| s.name.as_str()).collect();
    let mut extra: Vec<String> = st.names().into_iter().filter(|n| !expected.contains(n)).map(String::from).collect();
    extra.sort_unstable();
    if !(missing.is_empty() && wrong.is_empty() && extra.is_empty()) {
        // A few of each kind: enough to see whether it is another architecture or a stray key.
        let list = |what: &str, items: &[String]| -> Option<String> {
            if items.is_empty() {
                return None;
            }
            let shown = items.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
            let more = if items.len() > 4 { format!(", ... ({} in all)", items.len()) } else { String::new() };
            Some(format!("{what} {shown}{more}"))
        };
        let parts: Vec<String> = [list("missing", &missing), list("unexpected", &extra), list("mismatched", &wrong)]
            .into_iter()
            .flatten()
            .collect();
        return Err(bad(format!("does not match {}: {}", net.config().arch, parts.join("; "))));
    }

    tch::no_grad(|| -> Result<()> {
        for ((spec, var), view) in net.params().iter().zip(found) {
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let dims: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
            let torch = TrainerError::torch(format!("loading {} from {}", spec.name, path.display()));
            let src = Tensor::from_slice(&values).f_reshape(dims.as_slice()).map_err(torch)?;
            let mut dst = var.shallow_clone();
            dst.f_copy_(&src).map_err(TrainerError::torch(format!("copying {}", spec.name)))?;
        }
        Ok(())
    })
}

/// Rebuilds the network a checkpoint directory describes, on `device`, with its weights.
pub fn load_checkpoint(dir: &Path, device: Device) -> Result<(CheckpointMeta, Model)> {
    let meta = CheckpointMeta::load(&dir.join(CHECKPOINT_META_FILE))?;
    let model = Model::new(&meta.model, device)?;
    load_weights(&dir.join(CHECKPOINT_WEIGHTS_FILE), &model.net)?;
    Ok((meta, model))
}
