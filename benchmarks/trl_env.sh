#!/usr/bin/env bash
# Create the separate virtual environment that benchmarks/trl_b1.py runs TRL in (default
# .venv-trl at the repository root; set TRL_VENV to put it elsewhere). Safe to run again: it
# does nothing when the stamp matches this script. Versions are pinned so runs are comparable;
# transformers and peft match the groupwise venv, so both trainers run the same model code.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TRL_VENV:-.venv-trl}
python=${PYTHON:-python3}
stamp="$venv/.trl-bench-setup"
want=$(sha1sum benchmarks/trl_env.sh | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  nice -n 19 "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q)
nice -n 19 "${pip[@]}" --upgrade pip
# torch first and pinned: on this CPU machine pip takes the local CPU wheel, while an unpinned
# torch (pulled in by trl/accelerate) would download a multi-GB CUDA build.
nice -n 19 "${pip[@]}" "torch==2.13.0"
nice -n 19 "${pip[@]}" \
  "trl==1.16.0" \
  "transformers==5.23.0" \
  "peft==0.21.2" \
  "datasets==5.2.0" \
  "accelerate==1.15.0"
echo "$want" > "$stamp"
