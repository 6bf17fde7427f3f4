#!/usr/bin/env bash
# Set up (if needed), lint, type-check and run the test suite (tests marked slow are skipped;
# run them with: .venv/bin/python -m pytest -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --llamacpp  # the llama.cpp engine too (built once, the wheel cached)
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests benchmarks scripts
ruff format --check src tests benchmarks scripts
mypy
status=0
# two workers (pytest-xdist), one torch thread each (tests/conftest.py): on a 2-core CPU the
# suite's model loads, subprocesses and small kernels overlap; about half the wall time
python -m pytest -q -m "not slow" -n 2 --durations=15 "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
fi
exit "$status"
