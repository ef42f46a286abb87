#!/usr/bin/env bash
# The GPU checks and benchmarks of docs/perf.md, for a session lent an NVIDIA machine (the
# `device` tool): the CubeCL path's tests (sae-core/tests/cubecl_backend.rs and cubecl_matmul.rs,
# the patched matmul kernels) on cuda, then our SAE
# step and SAE encode on the cuda backend against EleutherAI sparsify (Triton kernels on) on the
# same GPU, in the same run, and each CubeCL kernel of the step against its reference; then the
# scale benchmark: the 28-layer Qwen2.5-VL-7B-shaped bf16 checkpoint (16.6 GB, written there)
# loaded to layer 24 and run over 128 tokens on cuda (load time, forward tokens/s, host peak RSS,
# the GPU's peak memory sampled by nvidia-smi), then transformers on the same GPU and job.
#
#   tools/gpu_bench.sh prepare   # here: xtask and the test built with the cuda feature,
#                                # sparsify's wheels, in .gpu/ (carry it: `carry: [".gpu"]`)
#   tools/gpu_bench.sh run       # there, with .gpu carried: runs the tests, installs the
#                                # wheels, runs the cases
#
# `prepare` needs cargo and pip with registry access. `run` needs an NVIDIA driver and the
# lent machines' python3 (torch with its NVIDIA wheels, transformers, accelerate, einops,
# safetensors, pyarrow, pandas: sparsify's other imports, carried here as wheels); nothing is
# fetched. It writes its logs to $OUT (else /tmp/gpu-bench). If sparsify cannot run there, ours
# are still timed and printed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.gpu
# The CubeCL tests of sae-core carried to the machine and run there first.
cubecl_tests="cubecl_backend cubecl_matmul"

case "${1:-}" in
prepare)
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sae-target}"
    cargo build -p xtask --features cuda
    mkdir -p "$dir/whl"
    # Stripped and compressed: a carried tree may hold 64 MiB in all.
    strip -o "$dir/xtask" "$CARGO_TARGET_DIR/debug/xtask"
    gzip -9 -f "$dir/xtask"
    for test in $cubecl_tests; do
        binary=$(cargo test -p sae-core --features cuda --test "$test" --no-run 2>&1 |
            sed -n "s/.*Executable .*(\(.*$test-[0-9a-f]*\)).*/\1/p")
        strip -o "$dir/$test" "$binary"
        gzip -9 -f "$dir/$test"
    done
    # sparsify and what it imports beyond the lent machines' packages (their Python is 3.12).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir/whl" eai-sparsify==1.3.3 datasets natsort \
        schedulefree simple-parsing docstring-parser dill multiprocess
    du -sh "$dir"
    ;;
run)
    out="${OUT:-/tmp/gpu-bench}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$dir"/whl/*.whl
    export PYTHONPATH=/tmp/site SAE_BENCH_PYTHON=python3 SAE_TOOLS_DIR="$PWD/tools"
    xtask=/tmp/sae-xtask
    gunzip -c "$dir/xtask.gz" >"$xtask"
    chmod +x "$xtask"
    # CubeCL loads the CUDA driver and NVRTC at run time: NVRTC from the CUDA toolkit or from
    # the NVIDIA wheels torch brings.
    nvrtc=$(python3 -c 'import glob, os, site
dirs = {os.path.dirname(p) for s in site.getsitepackages()
        for p in glob.glob(s + "/nvidia/**/libnvrtc*.so*", recursive=True)}
print(":".join(sorted(dirs)))')
    export LD_LIBRARY_PATH="$nvrtc:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        python3 -c 'import torch; print("torch", torch.__version__)'
        date -u
    } | tee "$out/machine.txt"
    # The kernels' correctness on this GPU first; the benchmarks run whatever it says.
    for test in $cubecl_tests; do
        gunzip -c "$dir/$test.gz" >"/tmp/sae-$test"
        chmod +x "/tmp/sae-$test"
        "/tmp/sae-$test" --test-threads 1 2>&1 | tee -a "$out/cubecl-tests.log" || true
    done
    for case in sae-step sae-encode sae-kernels; do
        "$xtask" bench "$case" --backend cuda 2>&1 | tee "$out/$case.log"
    done
    export SAE_SCALE_DIR=/tmp/sae-scale
    "$xtask" scale-checkpoint --layers 28 --out "$SAE_SCALE_DIR/qwen2_5_vl_7b_shaped_28_layers"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$out/scale-gpu.txt" &
    smi=$!
    env -u SAE_BENCH_PYTHON "$xtask" bench scale --layers 28 --at 24 --backend cuda 2>&1 |
        tee "$out/scale.log" || true
    kill "$smi" || true
    echo "scale-gpu-peak-mib ours=$(sort -n "$out/scale-gpu.txt" | tail -1)" | tee -a "$out/scale.log"
    python3 tools/bench_scale.py "$SAE_SCALE_DIR/qwen2_5_vl_7b_shaped_28_layers" 24 bf16 128 cuda \
        2>&1 | tee -a "$out/scale.log" || true
    ;;
*)
    echo "usage: tools/gpu_bench.sh prepare|run" >&2
    exit 2
    ;;
esac
