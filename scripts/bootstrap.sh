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
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # On a systemd machine the orthanc package starts a system service on 4242, the port
  # where clarinet_nb's settings (and the demo PACS) expect ORTHANC.  We installed the
  # package only for its binary, so stop that service again (not one that was there before).
  if [[ " ${need_apt[*]} " == *" orthanc "* ]]; then
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
      echo "stopping the orthanc system service the package just started (it would hold" \
        "port 4242); to run it: systemctl enable --now orthanc" >&2
      $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
    elif pgrep -f "Orthanc .*/etc/orthanc" >/dev/null 2>&1; then
      echo "stopping the orthanc service the package just started (it would hold port 4242)" >&2
      # not /etc/init.d/orthanc stop: start-stop-daemon --exec would stop every Orthanc
      $SUDO pkill -f "Orthanc .*/etc/orthanc" || true
    fi
  fi
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "clarinet_nb needs Python >= 3.11"'
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[$extras]"
