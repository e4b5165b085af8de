#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run the whole suite.
#
#   ./scripts/test.sh [extra pytest arguments]
#
# - DCMTK, Orthanc and dicom3tools (dciodvfy) come from Debian packages when absent: they are the
#   independent DICOM peers and validators of the integration tests; this needs root or sudo.
# - The viewer test (tests/test_viewer_ohif.py, marker `viewer`) also needs Orthanc's DICOMweb
#   plugin (orthanc-dicomweb), Chromium (chromium) and npm, which fetches OHIF's prebuilt viewer
#   (@ohif/app) once into .cache/ohif/. Run only it with: ./scripts/test.sh -m viewer
# - Python dependencies go into ./.venv (created when missing), bodycomp itself in editable mode.
# - Then: ruff (lint), mypy (types), pytest (all tests). The script fails when any step fails.
# - pytest runs in parallel processes (pytest-xdist): BODYCOMP_TEST_WORKERS of them (default 2,
#   the 2-core machine the suite is timed on; 0 runs it in this process). A test file runs whole
#   on one worker (--dist loadfile: module fixtures set up once, a file's tests in order), the
#   long reliability files first (tests/conftest.py). On a slow machine give the tests' deadlines
#   more time with BODYCOMP_TEST_TIMEOUT_SCALE (e.g. 2; tests/timing.py).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v storescp >/dev/null 2>&1 && command -v dcmcjpeg >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # deploy tests: verify the units
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || need_apt+=(libfaketime)  # wall-clock steps
# Broker fault tests (tests/servers.py) start private Redis and RabbitMQ instances on free ports.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=(rabbitmq-server)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]} (Debian packages)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Compose is only used to validate deploy/compose (no Docker engine is needed for `config`).
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    echo "== installing docker-compose (Debian package, to validate deploy/compose)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "== installing Python dependencies"
.venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install --quiet -e ".[test]"
# bodycomp is installed: ./scripts/run.sh (run by a test) must not reinstall it while other tests run.
touch .venv/.installed

export PATH="$PWD/.venv/bin:$PATH"
echo "== OHIF viewer (npm @ohif/app, cached in .cache/ohif)"
python -c "from tests.ohif_server import ohif_dist; print(ohif_dist())"
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
set +e
python -m pytest -n "${BODYCOMP_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
