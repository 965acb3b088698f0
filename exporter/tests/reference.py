"""Reference check for the exporter's tests: our ONNX against PyTorch/torchvision.

Usage: python reference.py JOBS.json SAMPLE.zip

JOBS.json is a list of {"name", "checkpoint": DIR, "onnx": FILE} with optional
"mlflow_model_dir" (an MLflow model directory to load with mlflow.pyfunc / mlflow.onnx) and
"mlflow_tracking_uri" + "mlflow_model_uri" (e.g. runs:/<id>/model, loaded through the store).

Usage: python reference.py --torch-logits JOBS.json SAMPLE.zip N

Only the PyTorch side, for models/tests/reference.rs (the Rust reference evaluator): JOBS.json
is a list of {"name", "checkpoint": DIR}; prints "IMAGES <json>" (the first N train images,
pixel/255, flat) and per job "RESULT <json>" with the flat float32 logits of those images.
For each job it builds the network in PyTorch from the checkpoint's config.json (torchvision's
model of that name with a gray first conv, or the two digit nets written out below), loads
model.safetensors into it, runs BATCH real images of the sample (pixel/255) through it in eval
mode, validates the ONNX with onnx.checker (full_check), runs it in onnxruntime and prints one
line "RESULT <json>" with the differences. The Rust tests decide pass/fail; this script only
fails on a broken setup.
"""
import collections
import io
import json
import sys
import traceback
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models" / "tests"))
import torch_nets  # noqa: E402  (the PyTorch mirrors of the zoo, shared with the trainer's tests)

BATCH = 16


def load_images(zip_path, n):
    with zipfile.ZipFile(zip_path) as z:
        text = io.TextIOWrapper(z.open("train.csv"), encoding="utf-8")
        next(text)  # header
        rows = [next(text) for _ in range(n)]
    values = np.array([[int(v) for v in r.strip().split(",")] for r in rows], dtype=np.int64)
    pixels = values[:, 1:].astype(np.float32) / np.float32(255.0)
    return pixels.reshape(n, 1, 28, 28), values[:, 0]


def build(cfg):
    return torch_nets.build(cfg["arch"], cfg.get("in_channels", 1), cfg.get("num_classes", 10),
                            image=cfg.get("image_size", 28))


def torch_reference(checkpoint, images):
    with open(f"{checkpoint}/config.json") as f:
        cfg = json.load(f)["model"]
    model = build(cfg)
    state = collections.OrderedDict(load_file(f"{checkpoint}/model.safetensors"))
    # Module versions (MNASNet refuses a state_dict without them) as a saved state_dict has.
    state._metadata = getattr(model.state_dict(), "_metadata", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, f"unexpected keys: {unexpected}"
    bad = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not bad, f"missing keys: {bad}"
    model.eval()
    x = torch.from_numpy(images)
    norm = cfg.get("normalization", {"scale": 1 / 255, "mean": 0.0, "std": 1.0})
    # (pixel * scale - mean) / std with pixel = 255 * input, in float32 like the ONNX prologue.
    mul = np.float32(255.0 * float(np.float32(norm["scale"])))
    x = (x * torch.tensor(mul) - torch.tensor(np.float32(norm["mean"]))) / torch.tensor(np.float32(norm["std"]))
    if cfg.get("in_channels", 1) > 1:
        x = x.repeat(1, cfg["in_channels"], 1, 1)
    with torch.no_grad():
        return model(x).numpy().astype(np.float64)


def compare(ref, got, tol):
    diff = np.abs(ref - got)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol  # a flip is only possible on a near tie
    flips = ref.argmax(1) != got.argmax(1)
    return {
        "max_abs_diff": float(diff.max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "argmax_agree": int((~flips).sum()),
        "argmax_flips_beyond_tol": int((flips & clear).sum()),
    }


_REFERENCE_CACHE = {}


def run_job(job, images):
    tol = job.get("tol", 1e-4)
    # Several exports (folded or not, opsets) share a checkpoint: run PyTorch once for them.
    if job["checkpoint"] not in _REFERENCE_CACHE:
        _REFERENCE_CACHE.clear()
        _REFERENCE_CACHE[job["checkpoint"]] = torch_reference(job["checkpoint"], images)
    ref = _REFERENCE_CACHE[job["checkpoint"]]
    res = {"name": job["name"], "n": len(images)}
    model = onnx.load(job["onnx"])
    onnx.checker.check_model(model, full_check=True)
    res["ops"] = dict(collections.Counter(n.op_type for n in model.graph.node))
    res["ir_version"] = model.ir_version
    res["opset"] = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
    res["min_ir_version"] = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    res["metadata"] = {p.key: p.value for p in model.metadata_props}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(job["onnx"], opts, providers=["CPUExecutionProvider"])
    res["inputs"] = [(i.name, i.shape) for i in sess.get_inputs()]
    res["outputs"] = [(o.name, o.shape) for o in sess.get_outputs()]
    got = sess.run(["logits"], {"input": images})[0].astype(np.float64)
    res.update(compare(ref, got, tol))

    if "mlflow_model_dir" in job:
        import mlflow
        import mlflow.onnx
        import mlflow.pyfunc
        from mlflow.models import Model

        d = job["mlflow_model_dir"]
        meta = Model.load(d)
        res["mlflow_signature"] = meta.signature.to_dict() if meta.signature else None
        res["mlflow_flavors"] = sorted(meta.flavors)
        res["mlflow_onnx_flavor"] = meta.flavors.get("onnx")
        res["mlflow_uuid"] = meta.model_uuid
        res["mlflow_time"] = meta.utc_time_created
        res["mlflow_same_onnx"] = mlflow.onnx.load_model(d) == model
        pred = mlflow.pyfunc.load_model(d).predict(images)["logits"].astype(np.float64)
        res["pyfunc"] = compare(ref, pred, tol)
        if "mlflow_model_uri" in job:
            mlflow.set_tracking_uri(job["mlflow_tracking_uri"])
            pred = mlflow.pyfunc.load_model(job["mlflow_model_uri"]).predict(images)["logits"].astype(np.float64)
            res["pyfunc_uri"] = compare(ref, pred, tol)
        res["versions"] = {"mlflow": mlflow.__version__, "onnx": onnx.__version__,
                           "onnxruntime": ort.__version__}
    return res


def torch_logits_main(jobs_path, zip_path, n):
    with open(jobs_path) as f:
        jobs = json.load(f)
    torch.set_num_threads(2)
    images, _ = load_images(zip_path, n)
    print("IMAGES " + json.dumps(images.reshape(-1).tolist()), flush=True)
    for job in jobs:
        try:
            logits = torch_reference(job["checkpoint"], images)
            res = {"name": job["name"], "logits": logits.reshape(-1).tolist(), "error": None}
        except Exception as e:  # reported per job so one failure does not hide the others
            res = {"name": job["name"], "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
        print("RESULT " + json.dumps(res), flush=True)


def main():
    if sys.argv[1] == "--torch-logits":
        torch_logits_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    jobs_path, zip_path = sys.argv[1], sys.argv[2]
    with open(jobs_path) as f:
        jobs = json.load(f)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    images, _ = load_images(zip_path, BATCH)
    for job in jobs:
        try:
            res = run_job(job, images)
            res["error"] = None
        except Exception as e:  # reported per job so one failure does not hide the others
            res = {"name": job["name"], "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
        print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
