#!/usr/bin/env bash
# Set up mmrobust on a fresh machine: eSpeak NG (system package, for MM-Digits speech), a virtual
# environment in .venv, the CPU build of torch 2.13.0 (installed first, so pip never resolves a
# CUDA build), then the package itself. Idempotent: rerunning only checks what is there.
#   bash scripts/setup.sh        # runtime (everything `mmrobust run` needs, report plots included)
#   bash scripts/setup.sh dev    # + test and lint tools, chromium (Debian) for the report test
#   VENV=/tmp/env bash scripts/setup.sh   # another virtual environment than .venv
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
VENV="${VENV:-.venv}"

# apt_install CMD PACKAGE: install the Debian PACKAGE unless the command CMD already exists.
apt_updated=""
apt_install() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "[setup] installing $2 (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "[setup] error: $2 is missing and this user cannot install system packages;" >&2
    echo "[setup] ask an administrator for: apt-get install $2" >&2
    exit 1
  fi
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
}

apt_install espeak-ng espeak-ng          # MM-Digits speech
if [[ "$extras" == *dev* ]]; then
  apt_install chromium chromium          # the test that renders report.html in a headless browser
fi

PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[setup] installing torch==2.13.0 (CPU)"
"$VENV/bin/python" -m pip install -q torch==2.13.0
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "[setup] installing mmrobust ($spec)"
"$VENV/bin/python" -m pip install -q -e "$spec"
if [[ "$extras" == *dev* ]]; then
  # Reference attack library for equivalence tests and benchmarks only; --no-deps so it can never
  # replace the CPU torch wheel.
  "$VENV/bin/python" -m pip install -q --no-deps torchattacks==3.5.1
fi
"$VENV/bin/python" -c "import torch, mmrobust; print(f'[setup] ok: mmrobust {mmrobust.__version__}, torch {torch.__version__}')"
