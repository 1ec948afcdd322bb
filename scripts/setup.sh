#!/usr/bin/env bash
# Idempotent setup: .venv with CPU torch 2.13.0 first (an existing torch, e.g. a CUDA build, is kept),
# then sgdlab with its dev extras and the pins that make Prefect 3.8.8 work (see shared STACK.md),
# bytecode compiled, and the Fashion-MNIST, Chromium and PostgreSQL Debian packages when running as root. pip's "Location ... is
# ignored" warnings about this machine's local package mirrors are filtered from stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
        || echo "setup: could not install dataset-fashion-mnist; Fashion-MNIST will be unavailable"
fi

# Headless Chromium for the MLflow-UI browser test (skipped without it). Best effort: never fatal.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages chromium chromium-driver (for the browser test)"
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1) \
        || echo "setup: could not install chromium; the browser test will be skipped"
fi

# PostgreSQL for `sgdlab tracking-server` and its tests (skipped without it). Best effort: never fatal.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian package postgresql (for sgdlab tracking-server)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1) \
        || echo "setup: could not install postgresql; the tracking-server tests will be skipped"
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
stamp=.venv/.sgdlab-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0 (CPU build)"
    "$VPY" -m pip install -q --disable-pip-version-check torch==2.13.0 2> >(grep -v 'is ignored' >&2)
fi
echo "setup: installing sgdlab[dev] into .venv"
"$VPY" -m pip install -q --disable-pip-version-check -e ".[dev]" 2> >(grep -v 'is ignored' >&2)
echo "setup: compiling bytecode"
"$VPY" -m compileall -q -j 0 .venv/lib >/dev/null 2>&1 || true
echo "$want" > "$stamp"
