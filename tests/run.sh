#!/usr/bin/env bash
# Runs the whole test suite. The tests drive the official OpenAI and Anthropic Python SDKs as
# real clients; they are installed from tests/requirements.txt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import openai, anthropic, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http' 2>/dev/null; then
  echo "tests/run.sh: installing the Python SDKs the tests use (tests/requirements.txt)"
  python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
cargo test --locked "$@"
