"""``groupwise reward-model``: the Bradley-Terry loss, a tiny model learning a separable
preference, the saved model in the ``reward_model`` reward, bad input, and the command."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise.cli import main as cli_main
from groupwise.config import RewardsConfig
from groupwise.data.files import DataFileError
from groupwise.recipes.reward_model import (
    METADATA_FILE,
    Pair,
    RewardModelArgs,
    bradley_terry_loss,
    check_output_dir,
    load_pairs,
    pairwise_accuracy,
    save_reward_model,
    split_pairs,
    train_reward_model,
)
from groupwise.rewards import RewardRunner, rewards_from_config

MARKERS = ["banana", "please", "thanks", "indeed"]
"""Chosen replies hold one of these words, rejected ones an ordinary word in its place. Several
markers, so that the untrained model's (tiny, but signed) preference is about chance."""
WORDS = ["the", "a", "it", "is", "was", "very", "some", "good", "nice", "old", "new", "green"]
TOPICS = ["basil", "tomatoes", "the moon", "rain", "bread", "chess", "rivers", "owls", "tea"]


def marker_pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows whose chosen reply differs from the rejected one only by a marker word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))
        b = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))
        topic = f"Tell me about {rng.choice(TOPICS)}."
        prompt: Any = topic if i % 2 else [{"role": "user", "content": topic}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": f"{a} {rng.choice(MARKERS)} {b}",
                "rejected": f"{a} {rng.choice(WORDS)} {b}",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- the loss ---------------------------------------------------------------------------------


def test_bradley_terry_loss_by_hand() -> None:
    loss = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]))
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1.5)))  # 0.2014
    assert float(bradley_terry_loss(torch.zeros(3), torch.zeros(3))) == pytest.approx(math.log(2))
    both = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.5, 1.0]))
    assert float(both) == pytest.approx(
        (math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(1.0))) / 2
    )
    # stable far from zero: -log sigmoid(-100) = 100, -log sigmoid(100) ~ e^-100
    far = bradley_terry_loss(torch.tensor([-50.0, 50.0]), torch.tensor([50.0, -50.0]))
    assert float(far) == pytest.approx(50.0)


def test_bradley_terry_gradient_is_sigmoid_of_the_negative_margin() -> None:
    chosen = torch.tensor([2.0], requires_grad=True)
    rejected = torch.tensor([0.5], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    expected = 1 / (1 + math.exp(1.5))  # sigmoid(-1.5): dL/dr_c = -that, dL/dr_r = +that
    assert chosen.grad is not None and rejected.grad is not None
    assert float(chosen.grad) == pytest.approx(-expected)
    assert float(rejected.grad) == pytest.approx(expected)


def test_loss_shapes_and_pairwise_accuracy() -> None:
    with pytest.raises(ValueError, match=r"must both be \[B\]"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"must both be \[B\]"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2, 1))
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 3.0, 1.0])
    assert pairwise_accuracy(chosen, rejected) == 0.5  # the tie counts as wrong


# --- training a tiny model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """tiny-random trained on 24 marker pairs for 3 epochs (18 steps), 24 held out (~5 s)."""
    root = tmp_path_factory.mktemp("rm")
    pairs = write_jsonl(root / "pairs.jsonl", marker_pairs(48))
    args = RewardModelArgs(
        str(pairs),
        "tiny-random",
        str(root / "out"),
        epochs=3,
        lr=1e-3,
        batch_size=4,
        eval_fraction=0.5,
        max_length=128,
    )
    return root / "out", train_reward_model(args)


def test_learns_a_separable_preference(trained: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = trained
    assert metrics["train_pairs"] == 24 and metrics["eval_pairs"] == 24
    assert 0.25 <= metrics["eval_accuracy_before"] <= 0.75  # about chance
    assert metrics["eval_loss_before"] == pytest.approx(math.log(2), abs=0.02)
    assert metrics["eval_accuracy_after"] >= 0.9
    assert metrics["eval_loss_after"] < 0.5  # not just barely ordered: clear margins
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    saved = json.loads((out / METADATA_FILE).read_text())
    assert saved["metrics"] == metrics
    assert saved["args"]["base"] == "tiny-random" and saved["args"]["epochs"] == 3
    assert Path(saved["args"]["pairs"]).is_absolute()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp dir


def test_saved_model_ranks_in_the_reward_model_reward(trained: tuple[Path, dict[str, Any]]) -> None:
    """``rewards.kwargs.reward_model.path`` at the output: new pairs ranked as trained."""
    out, _ = trained
    config = RewardsConfig(funcs=["reward_model"], kwargs={"reward_model": {"path": str(out)}})
    funcs = rewards_from_config(config, max_completion_length=32)
    fresh = marker_pairs(8, seed=123)
    prompts = [row["prompt"] for row in fresh] * 2
    replies = [row["chosen"] for row in fresh] + [row["rejected"] for row in fresh]
    scores = RewardRunner(funcs)(prompts, replies).per_func["reward_model"].tolist()
    chosen, rejected = scores[:8], scores[8:]
    assert all(c > r for c, r in zip(chosen, rejected, strict=True)), (chosen, rejected)


def test_the_reward_scores_what_training_scored(trained: tuple[Path, dict[str, Any]]) -> None:
    """Same rendering, truncation and pooling: the reward equals the training-time score."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from groupwise.recipes.reward_model import pair_rewards
    from groupwise.rewards.reward_model import reward_model

    out, _ = trained
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.truncation_side = "left"
    rows = marker_pairs(3, seed=7)
    pairs = [Pair(r["prompt"], r["chosen"], r["rejected"], "") for r in rows]
    with torch.no_grad():
        chosen, _ = pair_rewards(model, tokenizer, pairs, max_length=1024)
    reward = reward_model(str(out))([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert reward == pytest.approx(chosen.tolist(), abs=1e-4)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "a"}, r"row 2 \(line 2\): missing key 'rejected'"),
        ({"chosen": "a", "rejected": "b"}, r"row 2 \(line 2\): missing key 'prompt'"),
        ({"prompt": "p", "chosen": ["a"], "rejected": "b"}, r"row 2 .*'chosen' must be a string"),
        ({"prompt": "p", "chosen": "a", "rejected": None}, r"row 2 .*'rejected' must be a string"),
        (
            {"prompt": "", "chosen": "a", "rejected": "b"},
            r"row 2 .*prompt column 'prompt' is empty",
        ),
        ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, r"row 2 .*'content'"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, r"row 2 .*are the same text"),
        (["p", "a", "b"], r"row 2 \(line 2\): expected an object, got list"),
    ],
)
def test_bad_rows_name_the_file_and_row(tmp_path: Path, row: Any, message: str) -> None:
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, row, good])
    with pytest.raises(DataFileError, match=rf"pairs\.jsonl: {message}"):
        load_pairs(path)


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p"}\n{oops\n')
    with pytest.raises(DataFileError, match=r"broken\.jsonl: row 2 \(line 2\): invalid JSON"):
        load_pairs(tmp_path / "broken.jsonl")
    with pytest.raises(DataFileError, match=r"missing\.jsonl: no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\np,a,b\n")
    with pytest.raises(DataFileError, match=r"pairs\.csv: pairs must be a \.jsonl or \.json"):
        load_pairs(tmp_path / "pairs.csv")
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    with pytest.raises(DataFileError, match=r"one\.json: 1 pair\(s\); need at least 2"):
        load_pairs(one)
    one.write_text(json.dumps([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2))
    assert [p.where for p in load_pairs(one)] == ["row 1", "row 2"]  # a JSON array reads too


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"lr": 0.0}, "--lr must be a positive number"),
        ({"lr": float("nan")}, "--lr must be a positive number"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"eval_fraction": 1.0}, r"--eval-fraction must be in \(0, 1\)"),
        ({"max_length": 2}, "--max-length must be >= 8"),
    ],
)
def test_bad_settings_name_the_flag(change: dict[str, Any], message: str) -> None:
    args = RewardModelArgs("pairs.jsonl", "tiny-random", "out", **change)
    with pytest.raises(ValueError, match=message):
        args.check()


def test_split_and_output_dir_checks(tmp_path: Path) -> None:
    pairs = [Pair("p", f"a{i}", "b", f"row {i}") for i in range(10)]
    train, held = split_pairs(pairs, 0.3, seed=1)
    assert len(held) == 3 and len(train) == 7 and set(train).isdisjoint(held)
    assert split_pairs(pairs, 0.3, seed=1) == (train, held)  # seeded
    with pytest.raises(ValueError, match="--eval-fraction 0.01 holds out 0 of 10 pairs"):
        split_pairs(pairs, 0.01, seed=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--out: .*busy is not empty and holds no reward_model"):
        check_output_dir(tmp_path / "busy")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        check_output_dir(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") == tmp_path / "empty"


def test_a_failed_save_leaves_the_old_model_and_no_temp_dir(tmp_path: Path) -> None:
    target = tmp_path / "rm"
    target.mkdir()
    (target / METADATA_FILE).write_text("{}")

    class Broken:
        def save_pretrained(self, directory: str) -> None:
            (Path(directory) / "model.safetensors").write_text("half")
            raise OSError("write failed")

    with pytest.raises(OSError, match="write failed"):
        save_reward_model(Broken(), Broken(), target, {})
    assert [p.name for p in tmp_path.iterdir()] == ["rm"]
    assert (target / METADATA_FILE).read_text() == "{}"


def test_cli_errors_name_the_flag_or_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a"}])
    base = ["reward-model", str(pairs), "--base", "tiny-random", "--out", str(tmp_path / "o")]
    assert cli_main(base) == 2
    assert "pairs.jsonl: row 1 (line 1): missing key 'rejected'" in capsys.readouterr().err
    assert cli_main([*base, "--epochs", "0"]) == 2
    assert "groupwise: error: --epochs must be >= 1, got 0" in capsys.readouterr().err
    write_jsonl(pairs, marker_pairs(4))
    assert cli_main(base) == 2
    assert "--eval-fraction 0.1 holds out 0 of 4 pairs" in capsys.readouterr().err
    assert cli_main([*base, "--base", str(tmp_path / "nowhere"), "--eval-fraction", "0.5"]) == 2
    assert "is neither a preset" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        cli_main(["reward-model", str(pairs), "--out", str(tmp_path / "o")])
    assert "--base" in capsys.readouterr().err


def test_cli_trains_and_saves(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(12))
    out = tmp_path / "models" / "rm"
    command = [sys.executable, "-m", "groupwise", "reward-model", str(pairs)]
    command += ["--base", "tiny-random", "--out", str(out), "--epochs", "1", "--lr", "1e-3"]
    command += ["--batch-size", "4", "--eval-fraction", "0.25", "--seed", "3", "--max-length", "64"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "held-out pairwise accuracy:" in result.stdout and str(out) in result.stdout
    assert "epoch 1/1: train loss" in result.stderr
    saved = json.loads((out / METADATA_FILE).read_text())
    assert saved["args"]["seed"] == 3 and saved["args"]["max_length"] == 64
    assert saved["metrics"]["eval_pairs"] == 3 and saved["metrics"]["train_pairs"] == 9
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
