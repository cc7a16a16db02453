#!/usr/bin/env bash
# CI entry point: push models to Replicate, each to r8.im/OWNER/MODEL, stopping at the first failure.
#
#   scripts/push.sh [--dry-run] OWNER [MODEL...]     (no MODEL: every model in models.MODELS)
#
# Needs a container engine (Docker or Podman; with the Cog CLI installed, `cog push` is used),
# COG_TOKEN (the CLI token from https://replicate.com/auth/token, for `cogkit login`) unless
# already logged in, and REPLICATE_API_TOKEN to record the pushed version; none with --dry-run.
# Each model must exist on Replicate first (see README, "Deploy to Replicate"). Set
# ALLOW_BREAKING="reason" to push despite breaking input changes.
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
  if ! docker info >/dev/null 2>&1 && ! podman info >/dev/null 2>&1; then
    echo "push.sh: no container engine answers (apt-get install docker.io, then start dockerd)" >&2
    exit 1
  fi
  if [ -z "${REPLICATE_API_TOKEN:-}" ]; then
    echo "push.sh: set REPLICATE_API_TOKEN (https://replicate.com/account/api-tokens)" >&2
    exit 1
  fi
fi

bash scripts/setup.sh
if [[ ! " ${flags[*]} " == *" --dry-run "* ]] && [ -n "${COG_TOKEN:-}" ]; then
  # The CLI token, not the r8_ API token: `cogkit login` refuses that one, as `cog login` does.
  printf '%s' "$COG_TOKEN" | .venv/bin/cogkit login --token-stdin
fi
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
