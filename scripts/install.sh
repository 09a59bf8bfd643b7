#!/usr/bin/env bash
# Creates .venv (if missing) and installs cairn into it, editable, with the
# extras named as arguments (default: none). CPU torch is pinned through
# constraints/cpu.txt; set CAIRN_CONSTRAINTS=constraints/cuda.txt on GPU hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras=${1:-}
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# Some machines list local wheel folders as extra indexes; pip warns once per
# package about the missing ones. That noise is dropped, real errors are not.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet .venv/bin/python -m pip install -q --upgrade pip >/dev/null
quiet .venv/bin/python -m pip install -q -c "${CAIRN_CONSTRAINTS:-constraints/cpu.txt}" -e "$spec"
