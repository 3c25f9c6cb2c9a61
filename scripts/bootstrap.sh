#!/usr/bin/env bash
# Set up everything plantfloor needs on a fresh machine: a virtual environment with the
# project and its test tools, and (for the tests) the Mosquitto broker binary.
#   scripts/bootstrap.sh          the virtual environment only (enough for the demo; with uvloop)
#   scripts/bootstrap.sh --test   also Mosquitto, which the integration tests start on free ports
#                                 (PostgreSQL's binaries, for the roll-up's tests, Chromium,
#                                 for the board's browser tests, faketime for the chaos soak,
#                                 Tahu's npm package for a Sparkplug test)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "plantfloor needs Python 3.11 or newer as $PYTHON (set PYTHON=...)" >&2
  exit 2
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root to run: $*" >&2; return 1; fi; }

if [ "${1:-}" = "--test" ]; then
  if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    echo "installing the Mosquitto broker (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  fi
  # PostgreSQL's binaries: the roll-up's tests initdb and start their own cluster on a free port
  if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null; then
    echo "installing PostgreSQL (apt-get), for the roll-up's tests"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  # the board's browser tests: Playwright (from PyPI) drives Debian's Chromium by its path
  if [ ! -x /usr/bin/chromium ]; then
    echo "installing Chromium (apt-get), for the board's browser tests"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  # libfaketime: the chaos soak (python -m bench.soak) steps the agent's wall clock with it
  if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] && ! command -v faketime >/dev/null; then
    echo "installing faketime (apt-get), for the chaos soak's clock steps"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
  fi
  if ! command -v systemd-analyze >/dev/null; then
    echo "installing systemd (for systemd-analyze, used by the unit's security check)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null || true
  fi
fi

if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  echo "installing python3-venv (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

stamp=.venv/.plantfloor-installed
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,uvloop,rollup,board]"
  touch "$stamp"
fi

# Eclipse Tahu's Sparkplug payload library (npm), which a test decodes the agent's payloads with
if [ "${1:-}" = "--test" ] && command -v npm >/dev/null && [ ! -d tests/tahu/node_modules/sparkplug-payload ]; then
  (cd tests/tahu && npm ci --no-audit --no-fund --silent)
fi
