#!/usr/bin/env bash
# The test command: sets up what the tests need (on a fresh Debian 12 machine too), then runs every check.
#
#   bash tests/run.sh [PYTEST ARGS...]
#
# Needs root or passwordless sudo the first time (apt-get, and debootstrap for the TimescaleDB root).
# Installs PostgreSQL's server when missing, creates .venv and installs the project into it, builds
# the TimescaleDB root (scripts/timescaledb-root, cached), then runs ruff, mypy and pytest. Every
# check runs even when an earlier one fails; the exit status is non-zero if any failed, and pytest
# collecting no test (exit 5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

section() { printf '\n===== %s =====\n' "$*"; }
SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo -n); fi
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        "${SUDO[@]}" apt-get update -q
        APT_UPDATED=1
    fi
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@"
}

section "System packages"
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries missing: installing postgresql"
    apt_install postgresql
fi
ls -d /usr/lib/postgresql/*/bin 2>/dev/null || command -v initdb
if ! command -v chromium >/dev/null 2>&1; then
    echo "Chromium missing (the dashboard's browser test): installing chromium"
    apt_install chromium fonts-liberation
fi
command -v chromium
# Claude Code and Gemini CLI, which tests/test_hook_claude.py and test_hook_gemini.py drive with
# `tokenscale hook` as their hooks; installed from npm outside the repository. Claude Code's package
# ships a native binary; Gemini CLI runs on Node.js (20 or later).
NPM_PREFIX=/var/cache/tokenscale/npm
npm_tool() {  # npm_tool BINARY PACKAGE VERSION
    local bin="$NPM_PREFIX/node_modules/.bin/$1"
    if ! "$bin" --version 2>/dev/null | grep -qF "$3"; then
        echo "$2@$3 missing (the hook's end-to-end tests): installing it from npm"
        command -v npm >/dev/null 2>&1 || apt_install nodejs npm
        "${SUDO[@]}" mkdir -p "$NPM_PREFIX"
        "${SUDO[@]}" npm install --prefix "$NPM_PREFIX" --no-fund --no-audit --loglevel=error "$2@$3"
    fi
    echo "$1 $("$bin" --version)"
}
npm_tool claude @anthropic-ai/claude-code 2.1.332
npm_tool gemini @google/gemini-cli 0.61.0

section "Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv; then
        rm -rf .venv
        echo "python3 -m venv failed: installing python3-venv"
        apt_install python3-venv
        python3 -m venv .venv
    fi
fi
.venv/bin/python --version
.venv/bin/python -m pip install -q -e '.[dev]'

section "TimescaleDB root"
TOKENSCALE_TIMESCALEDB_ROOT="$(bash scripts/timescaledb-root | tail -n 1)"
export TOKENSCALE_TIMESCALEDB_ROOT
echo "$TOKENSCALE_TIMESCALEDB_ROOT"

LINT_PATHS=()
for dir in src tests benchmarks; do
    [ -d "$dir" ] && LINT_PATHS+=("$dir")
done

FAILED=()
check() {
    local name="$1"
    shift
    section "$name"
    local started=$SECONDS rc=0
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (exit $rc)")
        echo "!!!!! $name FAILED (exit $rc)"
    else
        echo "----- $name ok ($((SECONDS - started)) s)"
    fi
}

check "ruff check" .venv/bin/ruff check "${LINT_PATHS[@]}"
check "ruff format --check" .venv/bin/ruff format --check "${LINT_PATHS[@]}"
check "mypy" .venv/bin/mypy
# The benchmarks' smoke run: every benchmark and code path at tiny sizes, row counts checked, no timing.
check "benchmarks --quick" .venv/bin/python -m benchmarks.run --quick

section "pytest"
rc=0
.venv/bin/python -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    FAILED+=("pytest (exit 5: no tests were collected)")
elif [ "$rc" -ne 0 ]; then
    FAILED+=("pytest (exit $rc)")
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    section "FAILED"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
