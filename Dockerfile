# syntax=docker/dockerfile:1
# CUDA-capable image with the three binaries (trainer, exporter, infer) and only the shared
# libraries they load: libtorch and the CUDA libraries it links, ONNX Runtime with its CUDA
# provider. Expected size ~4.0 GB uncompressed: 3.89 GB of staged files (docs/deploy.md, measured
# with onnxruntime-gpu 1.31.1) on debian:bookworm-slim.
#
#   docker build -t digit-recognizer .
#   docker run --gpus all -v "$PWD:/work" digit-recognizer \
#       trainer --model resnet18 --epochs 10 --data digit-recognizer.zip --device cuda
#
# libtorch and ONNX Runtime come from their PyPI wheels (torch ships its CUDA/cuDNN libraries
# as nvidia-* wheels), so the image needs only the NVIDIA driver from the host.
# deploy/tests/dockerfile_test.py checks this file (no engine runs in the test command).

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
# /app in the build: the trainer's RUNPATH is the absolute /app/.venv/libtorch/lib, and the
# runtime keeps that path.
WORKDIR /app
COPY scripts/setup.sh scripts/requirements.txt scripts/
# Only what the binaries load (SETUP_TEST=0: no reference tools, no browser), with
# onnxruntime-gpu so that `infer --backend ort-cuda` has ONNX Runtime's CUDA provider.
RUN SETUP_TEST=0 SETUP_GPU=1 bash scripts/setup.sh
COPY . .
RUN cargo build --release --bin trainer --bin exporter --bin infer
# The runtime's files in their final layout under /runtime: binaries, libtorch, the CUDA
# libraries, ONNX Runtime, the entry scripts of deploy/bin. Not the venv's Python packages.
RUN bash deploy/bin/stage-runtime.sh /app /runtime

FROM debian:bookworm-slim AS runtime
# ca-certificates: MLflow servers over https. No Python: the entry scripts are bash.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# LD_LIBRARY_PATH: ONNX Runtime's CUDA provider needs the CUDA runtime libraries that torch's
# wheels bring (libtorch finds them by its own RPATH; libonnxruntime_providers_cuda does not).
# ORT_DYLIB_PATH names capi/ itself: ONNX Runtime looks for its providers beside that path.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ORT_DYLIB_PATH=/app/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so \
    LD_LIBRARY_PATH=/app/.venv/lib/python3.11/site-packages/nvidia/cu13/lib:/app/.venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    PATH=/app/bin:/app/deploy/bin:$PATH
COPY --from=build /runtime/ /
# Smoke test at build time: each binary loads what it loads at run time (a CPU training step,
# the exporter's ONNX Runtime self-check, `infer --backend ort`, and the CUDA provider's
# libraries short of the driver). The sample is mounted for this step only, not copied.
RUN --mount=type=bind,from=build,source=/app/sample,target=/smoke \
    image-smoke.sh /smoke/digit-recognizer.zip
WORKDIR /work
CMD ["infer", "--help"]
