#!/usr/bin/env bash
# README command 1: install cairn (CPU) and start the embedded stack on this
# machine with the locally built tiny model. Extra arguments go to `cairn up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh router
exec .venv/bin/cairn up "$@"
