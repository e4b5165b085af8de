#!/usr/bin/env bash
# Install bodycomp into ./.venv (when needed) and start the DICOM node with its embedded defaults:
# AE title BODYCOMP on 127.0.0.1:11112, data (spool, index, results, broker) in ./var, its own
# Celery worker on the embedded SQLite broker. No external server.
#
#   ./scripts/run.sh [bodycomp serve options, e.g. --host 0.0.0.0 --port 104 --ae-title BODYCOMP]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/bodycomp ] || [ pyproject.toml -nt .venv/.installed ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "== creating the virtual environment ./.venv" >&2
        "$PYTHON" -m venv .venv
    fi
    echo "== installing bodycomp and its Python dependencies into ./.venv (first run: about a minute)" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
    .venv/bin/python -m pip install --quiet --progress-bar off -e .
    touch .venv/.installed
    echo "== installed; starting the node (Ctrl-C stops it)" >&2
fi
exec .venv/bin/bodycomp serve "$@"
