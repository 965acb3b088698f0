#!/usr/bin/env python3
"""Build sample/digit-recognizer.zip: a small, committed stand-in for Kaggle's
"Digit Recognizer" archive, so tests and CI run without the 15 MB original.

Shape is exactly Kaggle's: a zip whose root holds
  train.csv             header `label,pixel0..pixel783`, 4000 rows stratified by class
  test.csv              header `pixel0..pixel783`, 1000 rows
  sample_submission.csv header `ImageId,Label`, 1000 rows, every label 0
Rows are copied byte for byte from the original (same header and line format) and
kept in their original order. Deterministic: fixed seed, fixed entry timestamps,
fixed compression level, so re-running it gives the same bytes.

Usage (from the repository root, stdlib only):
  python3 scripts/make_sample.py [ORIGINAL_ZIP] [--out sample/digit-recognizer.zip]
ORIGINAL_ZIP defaults to ../shared/data/digit-recognizer.zip relative to the repo root.
"""

import argparse
import io
import os
import random
import sys
import zipfile

SEED = 20240601
N_TRAIN = 4000
N_TEST = 1000
# Entries get this timestamp so the archive is byte-reproducible.
FIXED_DATE = (2020, 1, 1, 0, 0, 0)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lines(zf, name):
    """Return (header, rows) of one CSV entry, line terminators stripped."""
    data = zf.read(name)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [l[:-1] if l.endswith(b"\r") else l for l in lines]
    return lines[0], lines[1:]


def stratified_indices(rows, n_total, rng):
    """Pick n_total row indices with each class's share matching the full file
    (largest-remainder rounding), returned in original order."""
    by_class = {}
    for i, row in enumerate(rows):
        by_class.setdefault(row.split(b",", 1)[0], []).append(i)
    classes = sorted(by_class)
    total = len(rows)
    quotas = {c: n_total * len(by_class[c]) / total for c in classes}
    counts = {c: int(quotas[c]) for c in classes}
    short = n_total - sum(counts.values())
    # Largest fractional parts first; class name breaks ties so the order is fixed.
    for c in sorted(classes, key=lambda c: (-(quotas[c] - counts[c]), c))[:short]:
        counts[c] += 1
    picked = []
    for c in classes:
        picked.extend(rng.sample(by_class[c], counts[c]))
    return sorted(picked)


def write_entry(zf, name, header, rows):
    buf = io.BytesIO()
    buf.write(header + b"\n")
    for row in rows:
        buf.write(row + b"\n")
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # Unix, like Kaggle's archive
    zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "original",
        nargs="?",
        default=os.path.join(REPO_ROOT, "..", "shared", "data", "digit-recognizer.zip"),
        help="Kaggle digit-recognizer.zip (default: ../shared/data/digit-recognizer.zip)",
    )
    ap.add_argument(
        "--out",
        default=os.path.join(REPO_ROOT, "sample", "digit-recognizer.zip"),
        help="output zip (default: sample/digit-recognizer.zip)",
    )
    args = ap.parse_args()

    if not os.path.isfile(args.original):
        sys.exit(f"no such file: {args.original}")

    rng = random.Random(SEED)
    with zipfile.ZipFile(args.original) as zf:
        train_header, train_rows = read_lines(zf, "train.csv")
        test_header, test_rows = read_lines(zf, "test.csv")

    train_idx = stratified_indices(train_rows, N_TRAIN, rng)
    test_idx = sorted(rng.sample(range(len(test_rows)), N_TEST))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with zipfile.ZipFile(tmp, "w") as out:
        write_entry(out, "train.csv", train_header, [train_rows[i] for i in train_idx])
        write_entry(out, "test.csv", test_header, [test_rows[i] for i in test_idx])
        write_entry(
            out,
            "sample_submission.csv",
            b"ImageId,Label",
            [b"%d,0" % (i + 1) for i in range(N_TEST)],
        )
    os.replace(tmp, args.out)
    print(
        f"wrote {args.out}: {len(train_idx)} train rows, {len(test_idx)} test rows, "
        f"{os.path.getsize(args.out)} bytes"
    )


if __name__ == "__main__":
    main()
