#!/usr/bin/env bash
# Lays out the runtime image's files under DEST (the Dockerfile's build stage runs it; the
# runtime stage copies DEST to /): only what the three binaries load, at the paths they look.
#
#   stage-runtime.sh SRC DEST    SRC: the build folder (/app: .venv from scripts/setup.sh,
#                                target/release from cargo build)
#
# - /app/bin/{trainer,exporter,infer}, stripped.
# - libtorch where the trainer's RUNPATH points (SRC/.venv/libtorch/lib, absolute since the
#   build), keeping the wheel layout, because libtorch finds the CUDA libraries by its own RPATH
#   ($ORIGIN/../../nvidia/*/lib): torch/lib/*.so* less the Python binding, and nvidia/*/lib/*.so*
#   less what neither libtorch nor ONNX Runtime loads (static archives, profiler, multi-GPU
#   solver, BLAS shim, the .alt NVRTC builds).
# - ONNX Runtime's libonnxruntime*.so* (with onnxruntime-gpu: its CUDA provider; not the
#   TensorRT provider, whose TensorRT libraries are not shipped), and capi/libonnxruntime.so,
#   the ORT_DYLIB_PATH of the image. ORT_CAPI names another folder of ONNX Runtime libraries.
# - /app/deploy/bin: the containers' entry scripts (Kubernetes manifests, docs/deploy.md).
# Files are hard-linked where possible (the build stage is not shipped; COPY --from copies the
# contents), else copied. Prints each part's size.
set -euo pipefail
src=$(cd "${1:?usage: stage-runtime.sh SRC DEST}" && pwd)
dest=${2:?usage: stage-runtime.sh SRC DEST}
here=$(cd "$(dirname "$0")" && pwd)
app=$dest/app
sites=("$src"/.venv/lib/python3*/site-packages)
[[ ${#sites[@]} == 1 && -d ${sites[0]} ]] || { echo "error: want one $src/.venv/lib/python3*/site-packages, got ${sites[*]}" >&2; exit 1; }
site=${sites[0]}
rel=${site#"$src"/}
put() { mkdir -p "$2" && { ln -f "$1" "$2/" 2>/dev/null || cp -p "$1" "$2/"; }; }

mkdir -p "$app/bin"
for b in trainer exporter infer; do
  strip -o "$app/bin/$b" "$src/target/release/$b"
done
for f in "$site"/torch/lib/*.so*; do
  case ${f##*/} in libtorch_python.so | libshm*) continue ;; esac
  put "$f" "$app/$rel/torch/lib"
done
for f in "$site"/nvidia/*/lib/*.so*; do
  case ${f##*/} in
    libcusolverMg.* | libnvblas.* | libcufftw.* | libnvperf_* | libpcsamplingutil.* | libcheckpoint.* | *.alt.*) continue ;;
  esac
  d=${f%/*}
  put "$f" "$app/$rel/${d#"$site"/}"
done
capi=${ORT_CAPI:-$site/onnxruntime/capi}
ort=
for f in "$capi"/libonnxruntime*.so*; do
  case ${f##*/} in libonnxruntime_providers_tensorrt.so) continue ;; esac
  put "$f" "$app/$rel/onnxruntime/capi"
  case ${f##*/} in libonnxruntime.so.*) ort=${f##*/} ;; esac
done
[[ -n $ort ]] || { echo "error: no libonnxruntime.so.* in $capi" >&2; exit 1; }
# Relative links: they resolve the same in DEST and in the image. ORT_DYLIB_PATH must name a
# path in capi/ itself: ONNX Runtime looks for its provider libraries beside the path it was
# given, unresolved (through .venv/libonnxruntime.so it finds no CUDA provider).
ln -sfn "${rel#.venv/}/torch" "$app/.venv/libtorch"
ln -sfn "$ort" "$app/$rel/onnxruntime/capi/libonnxruntime.so"
mkdir -p "$app/deploy/bin"
cp -p "$here"/*.sh "$app/deploy/bin/"
size() { du -sh "$@" | awk '{ print $1 }' | paste -sd+; }
echo "staged $dest: binaries $(size "$app/bin"), libtorch $(size "$app/$rel/torch"), CUDA $(size "$app/$rel/nvidia"), ONNX Runtime $(size "$app/$rel/onnxruntime"); total $(du -sh "$dest" | cut -f1)"
