"""One groupwise run of a TRL-harness workload with extra overrides: per-step phase times and its
resident memory sampled every 20 ms (peak, and the per-second maximum, to see which phase peaks).

The lever table of benchmarks/README.md ("What each new lever did") comes from runs of this
script, one per variant, e.g.:
  .venv/bin/python benchmarks/rss_timeline.py B1 5 training.bf16_rounding=stochastic \\
      rollout.compile=true model.reference_on_disk=true
The harness's own levers (``groupwise_command`` in trl_vs_groupwise.py) are the baseline; the
overrides given here replace them. Set GROUPWISE_MALLOC=tuned in the environment for the malloc
tunables.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import trl_vs_groupwise as harness


def rss_gb(pid: int) -> float | None:
    """Current resident set of ``pid`` in GB (10^9 bytes), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1e3 / 1e9
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    workload, steps, extra = sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3:])
    out = Path("runs") / f"rss-timeline-{workload}"
    command = harness.groupwise_command(workload, steps, out, harness.resolve_model_dir(), extra)
    start = time.time()
    with (out.parent / f"{out.name}.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        while proc.poll() is None:
            rss = rss_gb(proc.pid)
            if rss is not None:
                samples.append((time.time() - start, rss))
            time.sleep(0.02)
    per_second: dict[int, float] = defaultdict(float)
    for t, rss in samples:
        per_second[int(t)] = max(per_second[int(t)], rss)
    print(
        f"exit {proc.returncode}, wall {time.time() - start:.0f} s, peak RSS {max(r for _, r in samples):.2f} GB"
    )
    print(
        "per-second max RSS (s:GB): "
        + " ".join(f"{k}:{v:.2f}" for k, v in sorted(per_second.items()))
    )
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        phases = {
            k.removeprefix("time/"): round(v, 2) for k, v in row.items() if k.startswith("time/")
        }
        print(f"step {row['step']}: {row['step_time']:.2f} s {phases}")


if __name__ == "__main__":
    main()
