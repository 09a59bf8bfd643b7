#!/usr/bin/env bash
# README command 2 (and CI): install everything the tests need, then run them.
#   - the project with its test extras into .venv (CPU torch pinned)
#   - PostgreSQL server binaries (the registry suite runs against a real one)
#   - Node.js packages for the cross-language contract tests
# Then lint and run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian packages"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

bash scripts/install.sh test,postgres
if [ -f tests/node/package.json ]; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Not `python -m pytest`: that puts the repo root on sys.path, where the top-level
# kernels/ folder would shadow the `kernels` package transformers probes for.
exec .venv/bin/pytest "$@"
