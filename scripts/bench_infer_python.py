"""Python side of scripts/bench_infer.sh: the references our `infer` is measured against.

Two commands (run with the project's venv python):

  checkpoint --arch resnet18 --out DIR
      Writes a checkpoint directory (model.safetensors + config.json, the pipeline's
      contract) for a torchvision architecture with 1 input channel and 10 classes, random
      weights and randomised BatchNorm statistics (so logits are not degenerate).

  bench --csv test.csv [--ort-batch B ...] [--pandas] [--seed-checkpoint DIR] ...
      Measures (`--repeats` times each, keeping the best; warm-ups excluded):
        * --ort-batch: Python onnxruntime on --onnx, images/s of session.run alone at each
          batch size (input already float32; --threads intra-op threads);
        * --pandas: pandas.read_csv(test.csv);
        * --seed-checkpoint: the seed project's path, end to end: pandas read -> torch eager
          torchvision model (weights from DIR/model.safetensors) at batch 64 -> submission
          CSV written; its first run in the process (as the seed really runs) and then
          the best of --repeats warm runs.
      Prints one JSON object on stdout. scripts/bench_infer.sh calls it once per
      measurement, interleaved with our runs, so all see the same machine load.
"""

import argparse
import json
import os
import sys
import tempfile
import time


def torchvision_model(arch):
    import torchvision

    # Imported here, like torch, so that the onnxruntime measurements never load torch.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "tests"))
    import torch_nets

    # The digit nets are torch_nets' own, not torchvision's.
    if arch not in ("cnn_digits", "m5", "resnet_digits") and not hasattr(torchvision.models, arch):
        raise SystemExit(f"bench_infer_python.py: {arch} is neither a torchvision nor a digit architecture")

    return torch_nets.build(arch, in_channels=1, num_classes=10)


def cmd_checkpoint(args):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    model = torchvision_model(args.arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    os.makedirs(args.out, exist_ok=True)
    save_file(state, os.path.join(args.out, "model.safetensors"))
    meta = {"model": {"arch": args.arch}, "epoch": 0, "producer": "bench_infer_python.py"}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(meta, f, indent=2)


def best_of(repeats, fn):
    """Smallest of `repeats` timings of fn() (seconds); the machine is shared, the minimum is
    the least disturbed run."""
    return min(fn() for _ in range(repeats))


def cmd_bench(args):
    import numpy as np
    import pandas as pd
    import torch

    threads = args.threads
    torch.set_num_threads(threads)
    out = {"threads": threads, "torch_version": torch.__version__, "pandas_version": pd.__version__}

    # pandas.read_csv of the same test.csv our infer parses (the page cache is warm: the
    # shell script's runs read it just before).
    if args.pandas:
        def read():
            t = time.perf_counter()
            pd.read_csv(args.csv)
            return time.perf_counter() - t

        out["pandas_read_ms"] = best_of(args.repeats, read) * 1e3
        print(f"pandas.read_csv: {out['pandas_read_ms']:.0f} ms", file=sys.stderr)

    if args.ort_batch:
        import onnxruntime as ort

        out["ort_version"] = ort.__version__
        x = (pd.read_csv(args.csv).values.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        n = x.shape[0]
        out["images"] = n
        # Python onnxruntime as a user would set it up: all graph optimisations,
        # `threads` intra-op threads, sequential execution.
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        out["onnxruntime"] = {}
        for bs in args.ort_batch:
            sess.run(None, {in_name: x[:bs]})  # warm-up, not timed

            def run_all():
                total = 0.0
                for s in range(0, n, bs):
                    chunk = x[s:s + bs]  # a contiguous view: no copy
                    t = time.perf_counter()
                    sess.run(None, {in_name: chunk})
                    total += time.perf_counter() - t
                return total

            secs = best_of(args.repeats, run_all)
            out["onnxruntime"][str(bs)] = {"img_per_s": n / secs, "total_ms": secs * 1e3}
            print(f"python onnxruntime batch {bs}: {n / secs:.0f} img/s", file=sys.stderr)

    # The seed project's path, end to end: CSV read, model construction and weight
    # loading (part of its predict script), eager inference at batch 64, submission
    # written. Interpreter start and imports are not counted.
    if args.seed_checkpoint:
        import torchvision  # noqa: F401  (imported before the clock starts)
        from safetensors.torch import load_file

        sub = args.seed_submission or os.path.join(tempfile.mkdtemp(prefix="bench-seed-"), "submission.csv")

        def seed():
            t = time.perf_counter()
            frame = pd.read_csv(args.csv)
            images = torch.tensor(frame.values, dtype=torch.float32).div_(255.0).reshape(-1, 1, 28, 28)
            model = torchvision_model(args.arch)
            state = load_file(os.path.join(args.seed_checkpoint, "model.safetensors"))
            missing, unexpected = model.load_state_dict(state, strict=False)
            # Only the BatchNorm step counters may be absent from the checkpoint.
            if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
                raise SystemExit(f"checkpoint does not match torchvision {args.arch}: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
            model.eval()
            preds = []
            with torch.no_grad():
                for s in range(0, images.shape[0], 64):
                    preds.append(model(images[s:s + 64]).argmax(1))
            labels = torch.cat(preds).numpy()
            pd.DataFrame({"ImageId": np.arange(1, len(labels) + 1), "Label": labels}).to_csv(sub, index=False)
            return time.perf_counter() - t

        # The first run in a process is what the seed's predict script costs for real
        # (torch initialises its kernels on the first batch, as ORT does when our infer
        # loads a model); the second shows it with that one-time cost excluded.
        out["seed_e2e_ms"] = seed() * 1e3
        out["seed_warm_e2e_ms"] = best_of(args.repeats, seed) * 1e3
        out["seed_submission"] = sub
        print(f"seed path (pandas + torch eager, batch 64): {out['seed_e2e_ms']:.0f} ms first run, "
              f"{out['seed_warm_e2e_ms']:.0f} ms warm", file=sys.stderr)

    json.dump(out, sys.stdout)
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoint", help="write a random-weight checkpoint for a torchvision arch")
    c.add_argument("--arch", default="resnet18")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench", help="time Python onnxruntime, pandas and/or the seed's torch path")
    b.add_argument("--csv", required=True, help="Kaggle test.csv (extracted)")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--repeats", type=int, default=1, help="runs of each measurement; the best is kept")
    b.add_argument("--onnx", help="ONNX model for --ort-batch")
    b.add_argument("--ort-batch", type=int, action="append", default=[],
                   help="time Python onnxruntime session.run at this batch size (repeatable)")
    b.add_argument("--pandas", action="store_true", help="time pandas.read_csv(CSV)")
    b.add_argument("--seed-checkpoint", help="time the seed's pandas + torch path on this checkpoint")
    b.add_argument("--seed-submission", help="where the seed path writes its submission")
    b.add_argument("--arch", default="resnet18", help="torchvision architecture of the checkpoint")
    args = p.parse_args()
    if args.cmd == "bench" and args.ort_batch and not args.onnx:
        p.error("--ort-batch needs --onnx")
    cmd_checkpoint(args) if args.cmd == "checkpoint" else cmd_bench(args)


if __name__ == "__main__":
    main()
