"""benchmarks/scaling_trl.py (groupwise vs TRL by model size and completion length): the random
model it writes has the architecture asked, a stopped child (memory or time) is a recorded
result, and its figures, Markdown and the rendered table (scripts/render_results.py) read as
documented. Nothing is trained: the children here are small Python processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tests_helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


bench = load_module(BENCHMARKS / "scaling_trl.py", "scaling_trl")
harness = sys.modules["harness"]  # the one scaling_trl.py imported
render = load_module(ROOT / "scripts" / "render_results.py", "render_results")

# SmolLM2-135M's config.json, as the GGUF conversion writes it (the base of every random model)
BASE_CONFIG: dict[str, Any] = {
    "_model_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2",
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "dtype": "float32",
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 576,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pad_token_id": 2,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "unk_token_id": 0,
    "use_cache": True,
    "vocab_size": 49152,
}


def _params(hidden: int, layers: int, heads: int, kv: int, mlp: int, vocab: int = 49152) -> int:
    """A Llama's parameters by hand: per layer q, o (h x h), k, v (h x kv d), gate, up, down
    (h x mlp) and two norms; the embedding (tied: counted once) and the final norm."""
    d = hidden // heads
    layer = 2 * hidden * hidden + 2 * hidden * kv * d + 3 * hidden * mlp + 2 * hidden
    return layers * layer + vocab * hidden + hidden


def test_the_360m_shape_has_smollm2_360m_parameter_count() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = bench.random_config(BASE_CONFIG, bench.SHAPES["360m"])
    assert config["head_dim"] == 64 and config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True and config["dtype"] == "float32"
    assert _params(960, 32, 15, 5, 2560) == 361_821_120  # SmolLM2-360M's published size
    hf_config = transformers.LlamaConfig(**{k: v for k, v in config.items() if k != "dtype"})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert sum(p.numel() for p in model.parameters()) == 361_821_120  # tied head counted once
    assert _params(2048, 24, 32, 32, 8192) == 1_711_376_384  # the 1.7B shape


def test_a_random_shape_that_does_not_divide_is_refused() -> None:
    shape = {**bench.SHAPES["tiny"], "num_attention_heads": 5}
    with pytest.raises(ValueError, match="divide"):
        bench.random_config(BASE_CONFIG, shape)


def test_the_writer_produces_the_architecture_asked(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(BASE_CONFIG))
    (base / "tokenizer.json").write_text("{}")
    (base / "chat_template.jinja").write_text("{{ messages }}")
    (base / "model.safetensors").write_bytes(b"not copied")
    shape = bench.SHAPES["tiny"]
    out = bench.write_random_model(base, tmp_path / "tiny", shape)
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in shape} == shape
    assert config["head_dim"] == 16 and config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert (out / "tokenizer.json").read_text() == "{}"
    assert (out / "chat_template.jinja").exists()
    assert bench.safetensors_parameters(out) == _params(64, 2, 4, 2, 128)
    header = _header(out / "model.safetensors")
    assert "lm_head.weight" not in header  # tied: stored once, as in the 135M directory
    assert header["model.embed_tokens.weight"]["shape"] == [49152, 64]
    assert header["model.layers.1.self_attn.k_proj.weight"]["shape"] == [32, 64]
    assert header["model.norm.weight"]["dtype"] == "F32"
    assert harness.load_matmul_params(out).head == 49152 * 64
    # kept as it is when asked again; rewritten when the shape changes
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    bench.write_random_model(base, out, shape)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    wider = {**shape, "intermediate_size": 256}
    bench.write_random_model(base, out, wider)
    assert bench.safetensors_parameters(out) == _params(64, 2, 4, 2, 256)


def test_the_written_model_loads_in_transformers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(BASE_CONFIG))
    out = bench.write_random_model(base, tmp_path / "tiny", bench.SHAPES["tiny"], seed=3)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    assert 0.01 < float(weight.std()) < 0.03  # N(0, initializer_range^2), not left empty
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert torch.equal(model.model.norm.weight, torch.ones(64))


def _header(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header: dict[str, Any] = json.loads(data[8 : 8 + length])
    return header


def test_models_parse_with_lora_and_1_7b_only_with_lora() -> None:
    assert bench.model_spec("360m") == bench.ModelSpec("360m", False)
    spec = bench.model_spec("1.7b-lora")
    assert spec.lora and spec.name == "1.7b-lora" and spec.label == "SmolLM2-1.7B (random)"
    with pytest.raises(ValueError, match="LoRA only"):
        bench.model_spec("1.7b")
    with pytest.raises(ValueError, match="unknown model '7b'"):
        bench.model_spec("7b")


# ---------------------------------------------------------------------------------------------
# Stopped children are results


def test_a_child_over_the_rss_bound_is_recorded_as_oom(tmp_path: Path) -> None:
    """A child that allocates past the bound, step by step, and prints a step line first: it is
    killed, not waited for, and the driver's status says OOM with the step it reached."""
    code = (
        "import time; print('step 1: 0.500 s', flush=True); blocks = []\n"
        "for _ in range(40):\n    blocks.append(b'x' * (25 * 10**6)); time.sleep(0.05)\n"
    )
    limits = harness.Limits(max_rss_gb=0.3)
    log = tmp_path / "oom.log"
    measured = harness.run_measured(
        [sys.executable, "-c", code], {}, log, limits=limits, check=False
    )
    assert measured.stopped.startswith("OOM: process tree RSS")
    assert measured.returncode == -9
    # stopped near the bound, not at 1 GB: the sampled tree RSS (ru_maxrss would also count the
    # pages this forking test process had before the child's exec)
    sampled = max(gb for _, gb in measured.samples)
    assert 0.3 < sampled < 0.6
    status, detail = bench.status_of(measured, log.read_text())
    assert status == "OOM" and "bound 0.30 GB" in detail


def test_a_child_past_the_wall_bound_is_recorded_as_timeout(tmp_path: Path) -> None:
    limits = harness.Limits(timeout_s=0.5)
    measured = harness.run_measured(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        {},
        tmp_path / "t.log",
        limits=limits,
        check=False,
    )
    assert measured.wall_s < 10
    assert bench.status_of(measured, "") == ("timeout", measured.stopped)
    assert measured.stopped.startswith("timeout: wall")


def test_the_bounds_and_the_exit_statuses() -> None:
    limits = harness.Limits(max_rss_gb=20.0, min_available_gb=1.5, timeout_s=60.0)
    assert limits.breach(19.0, 8.0, 10.0) == ""
    assert limits.breach(20.5, 8.0, 10.0).startswith("OOM: process tree RSS 20.50 GB")
    assert limits.breach(5.0, 1.2, 10.0).startswith("OOM: MemAvailable 1.20 GB")
    assert limits.breach(5.0, None, 61.0).startswith("timeout")
    assert harness.Limits().breach(1e6, 0.0, 1e9) == ""

    def measured(code: int) -> Any:
        return harness.Measured(1, 1.0, returncode=code)

    assert bench.status_of(measured(0), "") == ("ok", "")
    torch_oom = "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 GB"
    assert bench.status_of(measured(1), "x\n" + torch_oom + "\n")[0] == "OOM"
    assert bench.status_of(measured(-9), "")[0] == "killed"
    assert bench.status_of(measured(2), "boom\nValueError: bad\n") == (
        "failed",
        "exit 2: ValueError: bad",
    )


def test_without_limits_a_failing_child_still_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exit 3"):
        harness.run_measured([sys.executable, "-c", "exit(3)"], {}, tmp_path / "log")
    measured = harness.run_measured(
        [sys.executable, "-c", "exit(3)"], {}, tmp_path / "log", check=False
    )
    assert measured.returncode == 3 and measured.stopped == ""


# ---------------------------------------------------------------------------------------------
# Figures, Markdown and the rendered table of hand-made points

CONFIG_135M = {k: BASE_CONFIG[k] for k in BASE_CONFIG if not k.startswith("_")}
RATES = {
    "train": {"shape": [512, 576, 1536], "fp32": 200.0, "bf16": 800.0},
    "decode": {"shape": [32, 576, 1536], "fp32": 100.0, "bf16": 200.0},
}


def _side(trainer: str, status: str, times: list[float], gb: float, **kw: Any) -> Any:
    return bench.SideRun(
        trainer,
        status,
        kw.pop("detail", ""),
        steps=3,
        step_times=times,
        precision="bf16",
        prompt_tokens=[20.0] * len(times),
        completion_lengths=[(kw["length"], kw["length"])] * len(times),
        peak_rss_kb=int(gb * 1e9 / 1024),
    )


def _points(model_dir: Path) -> list[dict[str, Any]]:
    small = bench.Point(bench.ModelSpec("135m", False), 48, model_dir)
    long = bench.Point(bench.ModelSpec("135m", False), 1024, model_dir)
    large = bench.Point(bench.ModelSpec("1.7b", True), 256, model_dir)
    gw = _side("groupwise", "ok", [9.0, 4.0, 6.0], 2.5, length=48)
    trl = _side("trl", "ok", [30.0, 20.0, 16.0], 7.5, length=48)
    gw_long = _side("groupwise", "ok", [90.0, 80.0, 80.0], 9.0, length=1024)
    trl_oom = _side(
        "trl", "OOM", [700.0], 21.04, length=1024, detail="OOM: process tree RSS 21.04 GB > 21"
    )
    gw_timeout = _side("groupwise", "timeout", [], 14.2, length=256, detail="timeout: wall")
    trl_skipped = bench.SideRun("trl", "not run", "OOM at L=1024", steps=3)
    return [
        bench.point_figures(small, 134_515_008, gw, trl, 1, RATES),
        bench.point_figures(long, 134_515_008, gw_long, trl_oom, 1, RATES),
        bench.point_figures(large, 1_711_376_384, gw_timeout, trl_skipped, 1, RATES),
    ]


@pytest.fixture
def rows(tmp_path: Path) -> list[dict[str, Any]]:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG_135M))
    return _points(tmp_path)


def test_the_figures_of_hand_made_points(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    ok, oom, timeout = rows
    assert ok["groupwise_s"] == 5.0 and ok["trl_s"] == 18.0  # medians after 1 warm-up step
    assert ok["ratio"] == pytest.approx(3.6)
    assert ok["groupwise_gb"] == pytest.approx(2.5, abs=1e-5)
    assert ok["params_m"] == 134.5 and ok["lora"] is False
    assert ok["groupwise_exact_length"] and ok["trl_exact_length"]
    # the floor fraction is the harness's floor seconds over the median
    params = harness.load_matmul_params(tmp_path)
    for side, s, shared in (("groupwise", 5.0, True), ("trl", 18.0, False)):
        shape = harness.StepShape(4, 8, 20.0, 48, shared_prefix=shared)
        floor = harness.floor_seconds(harness.step_flops(params, shape), 800.0, 200.0)
        assert ok[f"{side}_floor_s"] == pytest.approx(floor.step)
        assert ok[f"{side}_floor_fraction"] == pytest.approx(floor.step / s)
    assert 0 < ok["trl_floor_fraction"] < ok["groupwise_floor_fraction"] < 1
    # an OOM keeps what it reached and has no median, ratio or floor fraction
    assert oom["trl_status"] == "OOM" and oom["trl_s"] is None and oom["ratio"] is None
    assert oom["trl_steps_done"] == 1 and oom["trl_gb"] == pytest.approx(21.04, abs=1e-5)
    assert oom["trl_note"] == "OOM after 1/3 steps (last 700 s)"
    assert oom["trl_floor_fraction"] is None and oom["groupwise_floor_fraction"] is not None
    assert timeout["groupwise_note"] == "timeout after 0/3 steps"
    assert timeout["trl_note"] == "not run: OOM at L=1024" and timeout["trl_gb"] is None
    assert timeout["model"] == "SmolLM2-1.7B (random)" and timeout["lora"] is True
    json.dumps(rows)  # what write_result stores


def test_the_markdown_of_hand_made_points(rows: list[dict[str, Any]]) -> None:
    lines = bench.table(rows).splitlines()
    assert lines[0] == (
        "| model | LoRA | L | groupwise s/step | TRL s/step | TRL / groupwise "
        "| groupwise peak RSS GB | TRL peak RSS GB | groupwise floor fraction "
        "| TRL floor fraction |"
    )
    assert lines[2].startswith("| SmolLM2-135M | no | 48 | 5.00 | 18.00 | 3.60x | 2.50 | 7.50 |")
    assert "| OOM after 1/3 steps (last 700 s) | - | 9.00 | 21.04 at OOM |" in lines[3]
    assert lines[3].endswith(" | - |")
    assert lines[4] == (
        "| SmolLM2-1.7B (random) | yes | 256 | timeout after 0/3 steps "
        "| not run: OOM at L=1024 | - | 14.20 at timeout | - | - | - |"
    )


def test_the_render_columns_on_hand_made_points(rows: list[dict[str, Any]]) -> None:
    """scripts/render_results.py's SCALING_TRL_COLUMNS give the script's own Markdown table."""
    record = {
        "name": "scaling-trl-probe",
        "commit": "0" * 40,
        "date": "2026-12-06",
        "cpu": {"model": "Intel Xeon", "family": 6, "model_number": 143, "flags": ["avx2"]},
        "command": "python benchmarks/scaling_trl.py",
        "figures": {"rows": rows},
        "transcribed": False,
    }
    assert harness.missing_fields(record) == []
    table = render.Table(
        "scaling-trl-probe",
        (render.Source("scaling-trl-probe", "rows"),),
        render.SCALING_TRL_COLUMNS,
    )
    text = render.render(table, {"scaling-trl-probe": record})
    lines = text.splitlines()
    assert [c.header for c in render.SCALING_TRL_COLUMNS] == list(bench.COLUMNS)
    assert lines[:5] == bench.table(rows).splitlines()
    assert "`scaling-trl-probe` (commit 0000000, 2026-12-06)" in lines[-1]


def test_the_header_names_the_precisions_and_the_rates() -> None:
    facts = {
        "cpu": "Intel Xeon",
        "torch": "2.13.0",
        "threads": 2,
        "precision": {"bf16": True, "reason": "bf16 is faster"},
        "matmul_gflops": RATES,
    }
    text = bench.machine_lines(facts, "auto", True)
    assert "groupwise training.bf16=auto -> bf16: bf16 is faster" in text
    assert "TRL: --trl-precision auto -> bf16" in text
    assert "train [512, 576, 1536]: fp32 200.0, bf16 800.0" in text
    assert bench.int_list("48, 256,1024,") == [48, 256, 1024]


# ---------------------------------------------------------------------------------------------
# Files after every point, and --reuse


def _args(tmp_path: Path, reuse: bool, steps: int = 3) -> Any:
    import argparse

    return argparse.Namespace(
        out=tmp_path / "results.json", steps=steps, reuse=reuse, run_all=False
    )


def test_reuse_keeps_finished_sides_and_runs_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first pass is stopped after its first point (its file holds that point); a second pass
    with --reuse runs only what is missing or failed, and a stop (OOM) still skips the longer
    lengths of that side."""
    spec = bench.ModelSpec("135m", False)
    points = [bench.Point(spec, n, tmp_path) for n in (48, 256, 1024)]
    ran: list[tuple[str, str]] = []
    outcome = {("135m-L48", "trl"): "failed", ("135m-L256", "trl"): "OOM"}

    def fake_side(point: Any, trainer: str, args: Any, python: Any, precision: str) -> Any:
        ran.append((point.key, trainer))
        status = outcome.get((point.key, trainer), "ok")
        return _side(trainer, status, [3.0, 2.0, 2.0], 1.0, length=point.length)

    monkeypatch.setattr(bench, "run_side", fake_side)
    precisions = {"groupwise": "bf16", "trl": "bf16"}

    def write(done: list[Any]) -> None:
        runs = [{"point": p.key, "groupwise": vars(g), "trl": vars(t)} for p, g, t in done]
        (tmp_path / "results.json").write_text(json.dumps({"runs": runs}, default=str))

    first = bench.run_points(points[:1], _args(tmp_path, False), Path("py"), precisions, write)
    assert ran == [("135m-L48", "groupwise"), ("135m-L48", "trl")] and len(first) == 1

    ran.clear()
    outcome[("135m-L48", "trl")] = "ok"
    done = bench.run_points(points, _args(tmp_path, True), Path("py"), precisions, write)
    # groupwise at L=48 came from the file; TRL's failed side ran again; TRL's OOM at 256
    # leaves 1024 not run
    assert ran == [
        ("135m-L48", "trl"),
        ("135m-L256", "trl"),
        ("135m-L256", "groupwise"),
        ("135m-L1024", "groupwise"),
    ]
    assert [g.status for _, g, _ in done] == ["ok", "ok", "ok"]
    assert [t.status for _, _, t in done] == ["ok", "OOM", "not run"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["point"] for r in saved["runs"]] == ["135m-L48", "135m-L256", "135m-L1024"]

    # a pass that adds a shorter point first still writes the later reused points each time
    short = bench.Point(spec, 16, tmp_path)
    seen: list[list[str]] = []
    bench.run_points(
        [short, *points[:2]],
        _args(tmp_path, True),
        Path("py"),
        precisions,
        lambda so_far: seen.append([p.key for p, _, _ in so_far]),
    )
    assert seen[0] == ["135m-L16", "135m-L48", "135m-L256"]

    # a file of runs with another step count is not reused
    ran.clear()
    bench.run_points(points[:1], _args(tmp_path, True, steps=2), Path("py"), precisions, None)
    assert ran == [("135m-L48", "groupwise"), ("135m-L48", "trl")]


def test_a_stopped_trl_side_keeps_the_step_times_it_printed() -> None:
    """trl_b1.py prints ``step N: S s`` per finished step; a side stopped before its JSON was
    written is read back from those lines (a timeout after one step keeps that step)."""
    log = "loading\nstep 1: 987.167 s\n{'loss': '0'}\nstep 2: 12.5 s\nwarning: step 3: later\n"
    assert harness.logged_step_times(log) == [987.167, 12.5]
    assert harness.logged_step_times("no steps yet") == []
