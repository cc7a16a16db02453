#!/usr/bin/env bash
# Peer engines for `cogkit bench serve --peer ct2`, each in its own venv under .peers/ (never in the
# runtime requirements). CTranslate2's converter borrows transformers and torch from ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .peers/ct2
.peers/ct2/bin/pip install -q "ctranslate2==4.8.5" "numpy<3" "safetensors"
echo "ct2 peer ready: .peers/ct2"
