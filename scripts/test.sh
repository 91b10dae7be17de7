#!/usr/bin/env bash
# The whole test suite (real Orthanc and DCMTK peers on loopback), then ruff and mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --tests
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pytest -q "$@"
"$PYTHON" -m ruff check clarinet_nb tests benchmarks scripts
"$PYTHON" -m mypy clarinet_nb
