"""MLflow's own view of what `exporter --register` wrote, for tests/registry.rs.

Usage: python registry.py TRACKING_URI SAMPLE.zip N NAME ALIAS MODEL_URI...

Loads each MODEL_URI (runs:/..., models:/NAME/1, models:/NAME@ALIAS) with
mlflow.pyfunc.load_model against TRACKING_URI and predicts the first N images of the
sample's test.csv (pixel/255, [N,1,28,28] float32). Prints one line
"RESULT <json>": {"logits": {uri: flat logits}, "alias_version": ..., "versions": [...],
"run_ids": [...], "sources": [...]} from MlflowClient's registry calls.
"""

import io
import json
import sys
import zipfile

import numpy as np


def main():
    uri, zip_path, n, name, alias = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    model_uris = sys.argv[6:]
    with zipfile.ZipFile(zip_path) as z:
        member = next(m for m in z.namelist() if m.endswith("test.csv"))
        text = z.read(member).decode()
    pixels = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, max_rows=n, dtype=np.float32)
    images = (pixels / np.float32(255.0)).reshape(-1, 1, 28, 28).astype(np.float32)

    import mlflow
    import mlflow.pyfunc
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    out = {"logits": {}}
    for m in model_uris:
        pred = mlflow.pyfunc.load_model(m).predict(images)["logits"]
        out["logits"][m] = [float(v) for v in np.asarray(pred, dtype=np.float32).ravel()]
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out["alias_version"] = int(c.get_model_version_by_alias(name, alias).version)
    versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    out["versions"] = [int(v.version) for v in versions]
    out["run_ids"] = [v.run_id for v in versions]
    out["sources"] = [v.source for v in versions]
    out["statuses"] = [v.status for v in versions]
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
