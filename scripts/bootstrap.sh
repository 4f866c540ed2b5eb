#!/usr/bin/env bash
# Set kwspot up in .venv on Debian/Ubuntu/Raspberry Pi OS (Python 3.10+):
# system packages (with sudo when not root), a virtual environment, kwspot.
#
#   scripts/bootstrap.sh          what `kwspot listen` needs (PortAudio, kwspot)
#   scripts/bootstrap.sh --dev    also what the tests need: TensorFlow (kwspot[train]),
#                                 pytest, ruff, espeak-ng, flite, PulseAudio, systemd-analyze,
#                                 mosquitto (the MQTT tests start their own broker)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
case "${1:-}" in
  --dev) dev=1 ;;
  "") ;;
  *) echo "usage: scripts/bootstrap.sh [--dev]" >&2; exit 2 ;;
esac

packages="python3-venv libportaudio2 libpulse0"
if [ "$dev" = 1 ]; then
  packages="$packages espeak-ng flite pulseaudio pulseaudio-utils sox systemd mosquitto mosquitto-clients"
fi

if command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing system packages:$missing" >&2
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
else
  echo "no apt-get: install PortAudio (libportaudio2), libpulse (libpulse0) and python3-venv yourself" >&2
fi

# A .venv left half-made (python3-venv was missing: no pip in it) is made again, not used as it is.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[train,test,zeroconf,verifier]'
else
  .venv/bin/python -m pip install -q .
fi
echo "kwspot is set up in .venv ($(.venv/bin/kwspot --version))" >&2
