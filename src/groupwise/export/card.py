"""The model card of a run: ``final/README.md``, with the Hugging Face Hub's metadata header.

Everything on it is read from the run's own files, so it states what this run measured:
``config.yaml`` (the base model, the task and data, the algorithm's settings, and the command
that reproduces the run: ``groupwise train`` with every setting that differs from the
defaults), ``summary.json`` (steps, held-out metric before and after, wall and training time,
the precision) and the GGUF files exported into ``final/``. The CPU is the machine's that
writes the card (at the end of training: the one that trained), named as the precision probe
names it (``lscpu``'s model name, the matmul-relevant flags), with its CPU family and cores.

The licence is the base model's: ``general.license`` of the GGUF file it came from, else the
``license:`` of the base model directory's own ``README.md``, else ``unknown``.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from groupwise.config import Config, config_to_dict
from groupwise.run.io import write_text_atomic

CARD_FILE = "README.md"
"""The card's file name inside ``final/`` (what the Hub shows)."""
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Hub ids of the presets (the card's ``base_model``)."""
SETTINGS = (
    "algorithm.loss_type",
    "algorithm.beta",
    "algorithm.epsilon",
    "algorithm.epsilon_high",
    "algorithm.num_iterations",
    "algorithm.scale_rewards",
    "rollout.num_generations",
    "rollout.temperature",
    "rollout.max_completion_length",
    "training.learning_rate",
    "training.per_device_train_batch_size",
    "training.gradient_accumulation_steps",
    "training.max_steps",
    "training.seed",
    "model.lora",
)
"""Settings the card's table shows (every other is in the reproduce command and config.yaml)."""


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def reproduce_command(run_config: dict[str, Any]) -> str:
    """``groupwise train key=value ...``: every setting that differs from the defaults."""
    defaults = _flat(config_to_dict(Config()))
    parts = ["groupwise", "train"]
    for key, value in _flat(run_config).items():
        if key in defaults and defaults[key] == value:
            continue
        if isinstance(value, str) and yaml.safe_load(value) == value and value.strip():
            raw = value
        else:
            raw = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            raw = raw.removesuffix("\n...").strip()
        parts.append(shlex.quote(f"{key}={raw}"))
    return " ".join(parts)


def base_license(base_model: str | None) -> str:
    """The base model's licence: its GGUF's ``general.license``, its card's ``license:``,
    else ``unknown``."""
    from groupwise.models import source_gguf
    from groupwise.models.gguf.source import gguf_string

    if not base_model:
        return "unknown"
    try:
        gguf = source_gguf(base_model)
    except FileNotFoundError:
        gguf = None
    if gguf is not None:
        return gguf_string(gguf, "general.license") or "unknown"
    readme = Path(base_model).expanduser() / CARD_FILE
    if readme.is_file():
        head = readme.read_text(encoding="utf-8").split("---")
        if len(head) >= 3 and not head[0].strip():
            meta = yaml.safe_load(head[1]) or {}
            if isinstance(meta, dict) and meta.get("license"):
                return str(meta["license"])
    return "unknown"


def cpu_line() -> str:
    """This machine's CPU: model name and matmul flags (as the precision probe names them),
    CPU family, cores."""
    from groupwise.models.precision import cpu_description

    family = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu family":
                family = value.strip()
                break
    except OSError:
        pass
    extra = f", CPU family {family}" if family else ""
    return f"{cpu_description()}{extra}, {os.cpu_count()} cores"


def _percent_or_value(value: Any, metric: str) -> str:
    if not isinstance(value, (int, float)):
        return "not measured"
    return f"{value:.1%}" if metric == "accuracy" else f"{value:.3f}"


def _header(base: str | None, task: str, licence: str) -> str:
    meta: dict[str, Any] = {}
    if base in HUB_IDS:
        meta["base_model"] = HUB_IDS[base]
    meta["library_name"] = "transformers"
    meta["license"] = licence
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["groupwise", "grpo", "reinforcement-learning", str(task)]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def model_card(run_dir: str | Path, cpu: str | None = None) -> str:
    """The card's text for the run in ``run_dir`` (``cpu``: this machine's by default)."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    flat = _flat(config)
    base = flat.get("model.name")
    task = summary.get("task") or flat.get("data.task")
    licence = base_license(base)
    rows = "\n".join(f"| `{k}` | `{flat.get(k)}` |" for k in SETTINGS if k in flat)
    params = flat.get("data.params") or {}
    lines = [
        _header(base, str(task), licence),
        f"# {base} trained with GRPO on `{task}`",
        "",
        f"This model is `{base}` trained with GRPO (group relative policy optimization) by "
        "groupwise.",
        "",
        "## Base model",
        "",
        f"`{base}`" + (f" ({HUB_IDS[base]})" if base in HUB_IDS else "") + f"; licence: {licence}.",
        "",
        "## Task and data",
        "",
        f"Task `{task}`: {flat.get('data.train_size')} training prompts, "
        f"{flat.get('data.eval_size')} held-out prompts, split seed {flat.get('data.seed')}"
        + (f", parameters `{json.dumps(params)}`" if params else "")
        + "; rewards: "
        + (f"`{flat['rewards.funcs']}`." if flat.get("rewards.funcs") else "the task's defaults."),
        "",
        "## Algorithm and settings",
        "",
        "| setting | value |",
        "| --- | --- |",
        rows,
        "",
        "Every setting is in `config.yaml` beside this directory.",
        "",
        *_training_section(summary, flat, cpu),
        *_use_section(run_dir / "final"),
        "## Reproduce",
        "",
        "```",
        reproduce_command(config),
        "```",
        "",
        "## Licence",
        "",
        f"The base model's licence applies: {licence}.",
        "",
    ]
    return "\n".join(lines)


def _training_section(summary: dict[str, Any], flat: dict[str, Any], cpu: str | None) -> list[str]:
    """Steps, the held-out metric before and after, times, CPU, precision."""
    metric = summary.get("eval_metric", "accuracy")
    before = _percent_or_value(summary.get("eval_before"), metric)
    after = _percent_or_value(summary.get("eval_after"), metric)
    precision = summary.get("precision") or {}
    return [
        "## Training",
        "",
        f"- steps: {summary.get('steps', 'unknown')}",
        f"- held-out {metric} (greedy, {flat.get('data.eval_size')} prompts, at most "
        f"{flat.get('eval.max_new_tokens')} new tokens): **{before} before, {after} after**",
        f"- wall time: {summary.get('wall_time_s', 0.0):.0f} s "
        f"(training steps: {summary.get('train_time_s', 0.0):.0f} s)",
        f"- CPU: {cpu or cpu_line()}",
        f"- precision: {'bf16' if precision.get('bf16') else 'float32'} compute, "
        f"{precision.get('param_dtype')} weights",
        "",
    ]


def _use_section(final: Path) -> list[str]:
    ggufs = sorted(p.name for p in final.glob("*.gguf"))
    lines = [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("final")',
        'tokenizer = AutoTokenizer.from_pretrained("final")',
        "```",
        "",
        "`groupwise chat RUN_DIR` talks to it in the terminal.",
    ]
    if ggufs:
        lines += ["", "GGUF files (llama.cpp, Ollama: `ollama create NAME -f <file>.Modelfile`):"]
        lines += [f"- `{name}`" for name in ggufs]
    return [*lines, ""]


def write_model_card(run_dir: str | Path, cpu: str | None = None) -> Path:
    """Write ``run_dir/final/README.md`` (atomically); returns its path."""
    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not final.is_dir():
        raise FileNotFoundError(f"{run_dir} has no final/ to write the model card into")
    path = final / CARD_FILE
    write_text_atomic(path, model_card(run_dir, cpu))
    return path
