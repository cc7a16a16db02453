#!/usr/bin/env bash
# CI entry point: push models to Replicate, each to r8.im/OWNER/MODEL, stopping at the first failure.
#
#   scripts/push.sh [--dry-run] OWNER [MODEL...]     (no MODEL: every model in models.MODELS)
#
# Needs the Cog CLI, a Docker engine and REPLICATE_API_TOKEN (for `cog login` and to record the
# pushed version), except with --dry-run. Each model must exist on Replicate first (see README,
# "Deploy to Replicate"). Set ALLOW_BREAKING="reason" to push despite breaking input changes.
# Builds missing weights, then runs `cogkit push` (select, checks, cog push, lock). Afterwards,
# commit models/locks/.
set -euo pipefail
cd "$(dirname "$0")/.."

flags=()
if [ "${1:-}" = "--dry-run" ]; then flags+=(--dry-run); shift; fi
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: scripts/push.sh [--dry-run] OWNER [MODEL...]" >&2
  exit 2
fi
owner=$1; shift
if [ -n "${ALLOW_BREAKING:-}" ]; then flags+=(--allow-breaking "$ALLOW_BREAKING"); fi

if [[ ! " ${flags[*]} " == *" --dry-run "* ]]; then
  # Fail before any setup or build when the push could not happen anyway.
  if ! command -v cog >/dev/null; then
    echo "push.sh: the Cog CLI is not installed: sudo curl -o /usr/local/bin/cog -L" \
         "https://github.com/replicate/cog/releases/latest/download/cog_\$(uname -s)_\$(uname -m)" \
         "&& sudo chmod +x /usr/local/bin/cog  (in GitHub Actions: uses: replicate/setup-cog@v2)" >&2
    exit 1
  fi
  if [ -z "${REPLICATE_API_TOKEN:-}" ]; then
    echo "push.sh: set REPLICATE_API_TOKEN (https://replicate.com/account/api-tokens)" >&2
    exit 1
  fi
  printf '%s' "$REPLICATE_API_TOKEN" | cog login --token-stdin
fi

bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  mapfile -t models < <(.venv/bin/python -c 'from models import MODELS; print("\n".join(MODELS))')
fi
for model in "${models[@]}"; do
  [ -f "weights/$model/manifest.json" ] || .venv/bin/cogkit build-weights "$model"
  .venv/bin/cogkit push "$model" "r8.im/$owner/$model" "${flags[@]}"
done
if [ ${#flags[@]} -gt 0 ] && [ "${flags[0]}" = "--dry-run" ]; then
  echo "push.sh: dry run of ${models[*]} passed"
else
  echo "push.sh: pushed ${models[*]}; commit models/locks/"
fi
