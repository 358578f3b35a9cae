#!/usr/bin/env bash
# Runs the whole test suite. Some tests drive real clients: the official OpenAI and Anthropic
# Python SDKs and the OpenTelemetry Python SDK (tests/requirements.txt), and Debian's headless
# Chromium through playwright-core (tests/e2e). Whatever of those is missing is installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Python packages go into a virtual environment of the project's own (target/pyenv), never
# into the machine's Python; the tests find it first on PATH.
venv=target/pyenv
if ! "$venv/bin/python3" -c 'import openai, anthropic, google.genai, boto3, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http' 2>/dev/null; then
  echo "tests/run.sh: installing the Python packages the tests use (tests/requirements.txt) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export PATH="$PWD/$venv/bin:$PATH"
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs npm)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]} (the UI tests run in a real browser; the cluster tests start private PostgreSQL and Redis servers)"
  if [ "$(id -u)" -ne 0 ]; then echo "tests/run.sh: run as root or install ${missing[*]} yourself" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  echo "tests/run.sh: installing playwright-core (tests/e2e/package-lock.json)"
  npm ci --prefix tests/e2e --no-audit --no-fund --silent
fi
cargo test --locked "$@"
