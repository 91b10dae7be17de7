#!/usr/bin/env bash
# Demo: start a local Orthanc loaded with a synthetic cohort on loopback and query/retrieve it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec "${PYTHON:-python3}" -m clarinet_nb.demo "$@"
