# syntax=docker/dockerfile:1
# CUDA-capable image with the three binaries: trainer, exporter, infer.
#
#   docker build -t digit-recognizer .
#   docker run --gpus all -v "$PWD:/work" -w /work digit-recognizer \
#       trainer --model resnet18 --epochs 10 --data digit-recognizer.zip --device cuda
#
# libtorch and ONNX Runtime come from their PyPI wheels (torch ships its CUDA/cuDNN libraries
# as nvidia-* wheels), so the runtime image needs only the NVIDIA driver from the host.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
# Same absolute path in both stages: the trainer's RUNPATH points into /app/.venv.
WORKDIR /app
COPY scripts/setup.sh scripts/requirements.txt scripts/
# Only what the binaries load (SETUP_TEST=0: no reference tools, no browser; tests do not run in
# the image), with onnxruntime-gpu so that `infer --backend ort-cuda` has ONNX Runtime's CUDA
# provider under `docker run --gpus all`.
RUN SETUP_TEST=0 SETUP_GPU=1 bash scripts/setup.sh
COPY . .
RUN cargo build --release --bin trainer --bin exporter --bin infer

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
# LD_LIBRARY_PATH: ONNX Runtime's CUDA provider (ort-cuda) needs the CUDA runtime libraries that
# torch's wheels bring (libtorch finds them by its own RUNPATH; libonnxruntime_providers_cuda
# does not).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ORT_DYLIB_PATH=/app/.venv/libonnxruntime.so \
    LD_LIBRARY_PATH=/app/.venv/lib/python3.11/site-packages/nvidia/cu13/lib:/app/.venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    PATH=/app/bin:$PATH
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/target/release/trainer /app/target/release/exporter /app/target/release/infer /app/bin/
# Smoke test at build time: each binary starts (libtorch and its rpath resolve).
RUN trainer --help >/dev/null && exporter --help >/dev/null && infer --help >/dev/null
WORKDIR /work
CMD ["infer", "--help"]
