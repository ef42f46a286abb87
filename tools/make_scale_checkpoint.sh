#!/usr/bin/env bash
# Writes a Qwen2.5-VL-7B-shaped checkpoint of random bf16 weights (the hub's tensor names and
# sharding, the tiny fixture's tokenizer) to DIR, with N text layers (28 is the real model:
# 16.6 GB; 6 is 6.0 GB). `cargo xtask bench scale` writes and uses the same one by itself.
#   tools/make_scale_checkpoint.sh N DIR
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 LAYERS DIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
exec cargo xtask scale-checkpoint --layers "$1" --out "$2"
