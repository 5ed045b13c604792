#!/usr/bin/env bash
# From a fresh clone to the demo or the tests in one command, and safe to run again:
#
#   ./bootstrap.sh demo [ARGS]       set up, then `evolve demo` (default ARGS: --dir /tmp/evolve-demo)
#   ./bootstrap.sh test [ARGS]       set up for the tests, then pytest (ARGS go to pytest; a leading -- is dropped)
#   ./bootstrap.sh setup             only the set-up of `test`
#   ./bootstrap.sh --check CMD ...   print the steps CMD would take, and take none
#
# Set-up (README "Set up on a fresh machine", each step skipped when it is done): a virtual
# environment in .venv, pip upgraded, torch, this package (`.` for the demo, `.[dev,ray,web]` for
# the tests), bubblewrap (and Chromium for the tests) through apt-get when missing and root, else a
# one-line hint. The pip steps are skipped while .venv's stamp matches pyproject.toml, the extras,
# the torch requirement and this checkout's path; an existing venv is never removed, and a torch
# already in it is kept unless AUTOEVOLVE_TORCH asks for one.
#
# Environment:
#   AUTOEVOLVE_TORCH   pip arguments for torch (default: torch==2.13.0, the CPU wheel here); for CUDA
#                      e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
#   AUTOEVOLVE_VENV    the virtual environment (default: .venv beside this script)
#   PYTHON             the interpreter that makes it (default: python3)
#   AUTOEVOLVE_PIP     the installer command (default: the venv's `python -m pip`; the script's own
#                      test sets it to a no-op to check the skip logic without installing torch)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
DEFAULT_TORCH="torch==2.13.0"
VENV="${AUTOEVOLVE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
PIP="${AUTOEVOLVE_PIP:-\"$PY\" -m pip}"
STAMP="$VENV/.autoevolve-bootstrap"

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check=0
if [ "${1:-}" = "--check" ]; then
    check=1
    shift
fi
cmd="${1:-}"
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
case "$cmd" in
    demo) extras="" ;;
    test | setup) extras="dev,ray,web" ;;
    *) usage ;;
esac

# Print a step; run it unless --check.
step() {
    echo "+ $*"
    [ "$check" = 1 ] || eval "$@"
}
say() { echo "bootstrap: $*"; }

stamp_key() {
    local torch="${AUTOEVOLVE_TORCH:-kept-or-$DEFAULT_TORCH}"
    printf '%s\n' "$(sha256sum pyproject.toml | cut -d' ' -f1)" "$ROOT" "$torch" | sha256sum | cut -d' ' -f1
}

# Whether the stamp says these extras (or more) were installed for this key.
stamped() {
    [ -f "$STAMP" ] || return 1
    local key have
    read -r key have <"$STAMP" || true
    [ "$key" = "$(stamp_key)" ] || return 1
    [ -z "$1" ] || [ "${have:-}" = "$1" ]
}

# --- system packages: apt-get when missing and root, else a hint -----------------------------
apt_updated=0
system_package() { # COMMAND PACKAGE WHY, or "python3 -c 'import M'" PACKAGE WHY
    if command -v "$1" >/dev/null 2>&1 || { [ "${1#* }" != "$1" ] && eval "$1" >/dev/null 2>&1; }; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        if [ "$apt_updated" = 0 ]; then
            step apt-get update -qq
            apt_updated=1
        fi
        step "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $2 >/dev/null"
    else
        say "$2 is missing ($3): sudo apt-get install $2" >&2
    fi
}

# --- the virtual environment -----------------------------------------------------------------
if [ -x "$PY" ]; then
    if ! "$PY" -c 'import sys' 2>/dev/null; then
        say "$VENV exists but its python does not run; it is left as it is: remove it, or set AUTOEVOLVE_VENV" >&2
        exit 1
    fi
    say "virtual environment $VENV: there"
elif [ -e "$VENV" ]; then
    say "$VENV exists but is not a virtual environment; it is left as it is: remove it, or set AUTOEVOLVE_VENV" >&2
    exit 1
else # Debian's python3 has no venv module without the python3-venv package
    system_package "${PYTHON:-python3} -c 'import ensurepip, venv'" python3-venv "python3 -m venv needs it"
    step "${PYTHON:-python3}" -m venv "\"$VENV\""
fi

# --- pip: torch and the package --------------------------------------------------------------
if stamped "$extras"; then
    say "packages: installed for this pyproject.toml (stamp $STAMP)"
else
    step "$PIP" install -q --upgrade pip
    if [ -n "${AUTOEVOLVE_TORCH:-}" ]; then
        step "$PIP" install "$AUTOEVOLVE_TORCH"
    elif [ -x "$PY" ] && "$PY" -c 'import torch' 2>/dev/null; then
        say "torch $("$PY" -c 'import torch; print(torch.__version__)'): kept (AUTOEVOLVE_TORCH picks another)"
    else
        step "$PIP" install "$DEFAULT_TORCH"
    fi
    step "$PIP" install -e "'.${extras:+[$extras]}'"
    echo "+ stamp $STAMP"
    [ "$check" = 1 ] || echo "$(stamp_key) $extras" >"$STAMP"
fi

# --- system packages the runs and the tests use ---------------------------------------------
system_package bwrap bubblewrap "train.py runs in its own namespaces"
if [ -n "$extras" ]; then
    system_package chromium chromium "the browser tests of the report and the web view"
fi

# --- the command -----------------------------------------------------------------------------
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" # as if activated: tests and the demo find `evolve`
if [ "$cmd" = demo ]; then
    [ $# -gt 0 ] || set -- --dir "${TMPDIR:-/tmp}/evolve-demo"
    echo "+ $VENV/bin/evolve demo $*"
    [ "$check" = 1 ] || exec "$VENV/bin/evolve" demo "$@"
elif [ "$cmd" = test ]; then
    echo "+ $PY -m pytest -q -n 2 --dist loadfile $*"
    [ "$check" = 1 ] || exec "$PY" -m pytest -q -n 2 --dist loadfile "$@"
fi
