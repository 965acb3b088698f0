//! Checkpoint directories: `model.safetensors` (every [`models::ParamSpec`] tensor, f32, named
//! as torchvision's state_dict) and `config.json` ([`CheckpointMeta`]), both written atomically.

use std::path::Path;

use models::{CheckpointMeta, Weights, CHECKPOINT_META_FILE, CHECKPOINT_WEIGHTS_FILE};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::net::{Model, Net};

/// Who wrote a checkpoint, for [`CheckpointMeta::producer`].
pub const PRODUCER: &str = concat!("trainer ", env!("CARGO_PKG_VERSION"));

/// `tensors` copied to the host as f32: the trainer's edge to [`models::Weights`].
pub fn to_weights<'a>(origin: &str, tensors: impl Iterator<Item = (&'a str, &'a Tensor)>) -> Result<Weights> {
    let mut w = Weights::new(origin);
    for (name, t) in tensors {
        let flat = t
            .f_detach()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_flatten(0, -1))
            .map_err(TrainerError::torch(format!("copying {name} to the host")))?;
        let values = Vec::<f32>::try_from(&flat).map_err(TrainerError::torch(format!("reading {name}")))?;
        w.insert(name, t.size().iter().map(|&d| d as usize).collect(), values)?;
    }
    Ok(w)
}

/// A host tensor of [`models::Weights`] as a CPU tch tensor (`what` names it in errors).
pub fn from_host(t: &models::Tensor, what: &str) -> Result<Tensor> {
    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&t.data).f_reshape(dims.as_slice()).map_err(TrainerError::torch(format!("loading {what}")))
}

/// Every state tensor of `net`, on the host.
pub fn net_weights(net: &Net) -> Result<Weights> {
    to_weights(CHECKPOINT_WEIGHTS_FILE, net.params().iter().map(|(spec, t)| (spec.name.as_str(), t)))
}

/// Writes `net`'s weights to `path` (atomically).
pub fn save_weights(path: &Path, net: &Net) -> Result<()> {
    Ok(net_weights(net)?.write(path)?)
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
    let weights = Weights::read(path)?;
    weights.check(net.graph(), net.config().arch.name())?;
    tch::no_grad(|| -> Result<()> {
        for (spec, var) in net.params() {
            let t = weights.get(&spec.name).expect("checked above");
            let src = from_host(t, &format!("{} from {}", spec.name, path.display()))?;
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
