#!/usr/bin/env bash
# Create .venv and install rlmtf into it: `bash scripts/setup.sh` (runtime) or `bash scripts/setup.sh --dev`
# (runtime + test tools). PyTorch's CPU build is installed first, so that the project's `torch>=2.2`
# requirement is already met and no multi-GB CUDA build is pulled in; set RLMTF_TORCH to pick another
# torch requirement (e.g. RLMTF_TORCH="torch" for the default build of your platform, CUDA included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "${RLMTF_TORCH:-torch==2.13.0}" || .venv/bin/python -m pip install --quiet "torch>=2.2"
fi
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install --quiet -e '.[dev]'
else
  .venv/bin/python -m pip install --quiet -e .
fi
.venv/bin/python -c "import rlmtf, torch; print(f'rlmtf {rlmtf.__version__} installed (torch {torch.__version__})')"
