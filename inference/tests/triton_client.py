"""Talks to `infer serve` with NVIDIA's standard client, `tritonclient[http]`, run by
`serve_clients.rs` with the project's venv python:

    .venv/bin/python inference/tests/triton_client.py --url 127.0.0.1:PORT --sample ZIP \
        --models cnn_a,cnn_b,cnn_c --out RESULT.json

Checks the health, metadata and readiness calls, predicts every image of the sample's
test.csv with each model and `ensemble` (batches alternate between binary FP32 tensors,
tritonclient's default, and JSON UINT8), checks that a bad request raises the client's
exception with the server's message, and reads /metrics with prometheus_client's parser.
Writes {"labels": {model: [...]}, "metric_families": {name: type}} for the Rust side
to compare with offline `infer`. Any failed check exits non-zero.
"""

import argparse
import io
import json
import urllib.request
import zipfile

import numpy as np
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--sample", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()

    with zipfile.ZipFile(args.sample) as z:
        test = np.loadtxt(io.BytesIO(z.read("test.csv")), delimiter=",", skiprows=1, dtype=np.uint8)

    client = httpclient.InferenceServerClient(url=args.url)
    assert client.is_server_live(), "not live"
    assert client.is_server_ready(), "not ready"
    meta = client.get_server_metadata()
    assert meta["name"] == "digit-recognizer", meta
    names = args.models.split(",") + ["ensemble"]
    for name in names:
        assert client.is_model_ready(name), name
        m = client.get_model_metadata(name)
        assert m["name"] == name and m["inputs"][0]["name"] == "input", m
    assert not client.is_model_ready("no_such_model")

    labels = {}
    for name in names:
        out = []
        for i, start in enumerate(range(0, len(test), args.batch)):
            rows = test[start : start + args.batch]
            if i % 2 == 0:
                inp = httpclient.InferInput("input", [len(rows), 1, 28, 28], "FP32")
                inp.set_data_from_numpy((rows.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28))
                outputs = [httpclient.InferRequestedOutput("label"), httpclient.InferRequestedOutput("probabilities")]
            else:
                inp = httpclient.InferInput("input", [len(rows), 784], "UINT8")
                inp.set_data_from_numpy(rows, binary_data=False)
                outputs = [httpclient.InferRequestedOutput("label", binary_data=False)]
            res = client.infer(name, [inp], outputs=outputs)
            lab = res.as_numpy("label")
            assert lab.dtype == np.int64 and lab.shape == (len(rows),), (lab.dtype, lab.shape)
            if i % 2 == 0:
                p = res.as_numpy("probabilities")
                assert p.shape == (len(rows), 10), p.shape
                assert np.allclose(p.sum(axis=1), 1.0, atol=1e-4), p.sum(axis=1)
                assert (p.argmax(axis=1) == lab).mean() > 0.9  # the vote may differ from the mean
            out += [int(v) for v in lab]
        labels[name] = out

    # A bad request: the client raises with the server's {"error": ...} message.
    bad = httpclient.InferInput("input", [1, 784], "FP32")
    bad.set_data_from_numpy(np.full((1, 784), 2.0, dtype=np.float32))
    try:
        client.infer("cnn_a", [bad])
        raise SystemExit("an FP32 pixel of 2.0 was accepted")
    except InferenceServerException as e:
        assert "outside [0, 1]" in str(e), str(e)

    with urllib.request.urlopen(f"http://{args.url}/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers["Content-Type"]
        text = r.read().decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}

    with open(args.out, "w") as f:
        json.dump({"labels": labels, "metric_families": families}, f)


if __name__ == "__main__":
    main()
