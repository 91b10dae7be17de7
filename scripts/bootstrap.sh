#!/usr/bin/env bash
# Install what clarinet_nb's demo and tests need on a Debian/Ubuntu machine:
# Orthanc and DCMTK from apt (when missing; needs root or sudo), then the package
# with its test and notebook extras into the current Python (a virtualenv if one
# is active).  With --tests, also what the browser test needs: Debian's Chromium
# and a font from apt, and Playwright (which drives that Chromium; it never
# downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="test,notebooks"
need_apt=()
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
command -v /usr/bin/dcmqrscp >/dev/null 2>&1 || need_apt+=(dcmtk)
if [ "${1:-}" = "--tests" ]; then
  extras="test,notebooks,browser"
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ${need_apt[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  # The orthanc package may try to start a system service on 4242; nothing here needs it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "clarinet_nb needs Python >= 3.11"'
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[$extras]"
