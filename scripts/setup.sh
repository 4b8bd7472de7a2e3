#!/usr/bin/env bash
# Set up everything T1ToT2 needs in this checkout; safe to run again (it only does what is missing).
#   scripts/setup.sh          Python environment in .venv (the demo needs nothing more)
#   scripts/setup.sh --system also the Debian packages the tests use (DICOM validators, Chromium, Mesa EGL)
# T1TOT2_TORCH picks the PyTorch requirement, e.g. T1TOT2_TORCH="torch==2.13.0" (default, CPU build)
# or T1TOT2_TORCH="torch --index-url https://download.pytorch.org/whl/cu124" for a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--system" ]]; then
  need=()
  command -v dciodvfy >/dev/null || need+=(dicom3tools)
  command -v dcmdump >/dev/null || need+=(dcmtk)
  [[ -x /usr/bin/chromium ]] || need+=(chromium)
  for lib in libegl1 libegl-mesa0 libgl1-mesa-dri; do
    dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
  done
  if ((${#need[@]})); then
    echo "setup: installing Debian packages: ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

PY="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || { echo "setup: creating .venv"; "$PY" -m venv .venv; }
stamp=.venv/.t1tot2-installed
want="$(cat pyproject.toml; echo "${T1TOT2_TORCH:-torch==2.13.0}")"
if [[ ! -f $stamp ]] || [[ "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: installing Python packages into .venv (first time only)"
  log=.venv/setup.log
  {
    .venv/bin/python -m pip install --upgrade pip
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install ${T1TOT2_TORCH:-torch==2.13.0}
    .venv/bin/python -m pip install -e ".[slicer,test]"
  } >"$log" 2>&1 || { grep -v "^WARNING: Location" "$log" | tail -20; echo "setup: pip failed (full log in $log)"; exit 1; }
  .venv/bin/python -c "import torch, SimpleITK, slicer, T1ToT2Lib" || { echo "setup: the Python environment is incomplete (see $log)"; exit 1; }
  printf '%s' "$want" > "$stamp"
fi
