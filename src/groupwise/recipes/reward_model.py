"""Train a Bradley-Terry reward model from preference pairs (``groupwise reward-model``).

Each row of the pairs file is ``{"prompt": text or [{role, content}, ...], "chosen": reply,
"rejected": reply}``. The text scored is the whole conversation, prompt then reply as the
assistant's turn, rendered exactly as the ``reward_model`` reward renders it
(:func:`groupwise.rewards.reward_model.render_conversation`: the tokenizer's chat template, the
conversation's last ``max_length`` tokens). The model is an ``AutoModelForSequenceClassification``
with one label (a scalar head, newly initialised) on top of a base causal LM, so the saved
directory is what ``rewards.kwargs.reward_model.path`` expects.

The Bradley-Terry model says a reply is preferred with probability
``P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r))``; training minimises its negative
log-likelihood over the pairs (:func:`bradley_terry_loss`) with AdamW. A seeded share of the
pairs is held out, and the *pairwise accuracy* on them (how often ``r(chosen) > r(rejected)``)
is reported before and after training. Rewards are only defined up to a constant: their
differences, not their values, carry the meaning.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupwise.data.files import DataFileError, check_prompt, read_records
from groupwise.models import (
    load_tokenizer,
    pick_device,
    resolve_model_path,
    tiny_random_model,
)
from groupwise.rewards.reward_model import encode_conversations, render_conversation
from groupwise.run.io import atomic_directory

METADATA_FILE = "reward_model.json"
"""Written into the output directory: the metrics and the arguments of the run."""


@dataclass(frozen=True)
class Pair:
    """One preference: for ``prompt``, the reply ``chosen`` is better than ``rejected``."""

    prompt: str | list[dict[str, str]]
    chosen: str
    rejected: str
    where: str
    """Location in the pairs file, e.g. ``"row 3 (line 4)"``."""


@dataclass
class RewardModelArgs:
    """The settings of one ``groupwise reward-model`` run (the command's flags)."""

    pairs: str
    """The pairs file: JSONL (``.jsonl``, ``.jsonl.gz``) or a JSON array (``.json``)."""
    base: str
    """The base causal LM: a preset (``smollm2-135m-instruct``, ``tiny-random``), a local model
    directory or a ``.gguf`` file. Nothing is downloaded."""
    out: str
    """Where the reward model is written (replaced if it holds an earlier reward model)."""
    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 8
    """Pairs per optimizer step (each step scores 2 x batch_size conversations)."""
    eval_fraction: float = 0.1
    """Share of the pairs held out (seeded shuffle) for the pairwise accuracy."""
    seed: int = 0
    max_length: int = 1024
    """Tokens kept per conversation (its last ones: the reply), as the reward does by default."""

    def check(self) -> None:
        """Raise ``ValueError`` naming the flag of the first bad setting."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_length < 8:
            raise ValueError(f"--max-length must be >= 8 tokens, got {self.max_length}")


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Mean Bradley-Terry negative log-likelihood of ``chosen`` beating ``rejected``.

    ``chosen``, ``rejected``: ``[B]`` rewards ``r(x_i, y_c,i)`` and ``r(x_i, y_r,i)`` of the same
    ``B`` pairs. Returns the scalar

        L = 1/B * sum_i -log sigmoid(r_c,i - r_r,i) = 1/B * sum_i log(1 + exp(r_r,i - r_c,i))

    computed as ``softplus(r_r - r_c)`` (stable for large margins). Equal rewards give ``log 2``;
    rewards 2.0 vs 0.5 give ``log(1 + e^-1.5)`` ~ 0.2014.
    """
    if chosen.ndim != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen and rejected must both be [B]; got {tuple(chosen.shape)} and "
            f"{tuple(rejected.shape)}"
        )
    return F.softplus(rejected - chosen).mean()  # [B] -> []


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> float:
    """Share of pairs with ``r(chosen) > r(rejected)`` (a tie counts as wrong); ``[B]`` each."""
    return float((chosen > rejected).float().mean())


def load_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a JSONL or JSON file, validated; errors name the file, the row and the key."""
    file = Path(path).expanduser()
    if not file.name.lower().endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json")):
        raise DataFileError(f"{file}: pairs must be a .jsonl or .json file")
    pairs = []
    for where, record in read_records(file):
        try:
            pairs.append(_pair(record, where))
        except ValueError as exc:
            raise DataFileError(f"{file}: {exc}") from None
    if len(pairs) < 2:
        raise DataFileError(
            f"{file}: {len(pairs)} pair(s); need at least 2 (some to train on, some held out)"
        )
    return pairs


def _pair(record: Any, where: str) -> Pair:
    """One validated pair; raises ``ValueError`` naming ``where`` and the key."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            columns = ", ".join(map(str, record)) or "none"
            raise ValueError(f"{where}: missing key {key!r} (keys: {columns})")
    prompt = check_prompt(record["prompt"], column="prompt", where=where)
    for key in ("chosen", "rejected"):
        if not isinstance(record[key], str):
            raise ValueError(
                f"{where}: {key!r} must be a string (the assistant's reply), got "
                f"{type(record[key]).__name__}"
            )
    if record["chosen"] == record["rejected"]:
        raise ValueError(f"{where}: 'chosen' and 'rejected' are the same text; drop the row")
    return Pair(prompt, record["chosen"], record["rejected"], where)


def split_pairs(
    pairs: Sequence[Pair], eval_fraction: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out): a ``seed``-shuffled split, ``round(eval_fraction * n)`` held out (at
    least one pair, and at least one left to train on)."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    count = round(eval_fraction * len(order))
    if not 1 <= count < len(order):
        raise ValueError(
            f"--eval-fraction {eval_fraction} holds out {count} of {len(order)} pairs; "
            "need at least 1 held out and 1 to train on"
        )
    return order[count:], order[:count]


def load_base(base: str, seed: int) -> tuple[nn.Module, Any]:
    """A one-label sequence classifier on the base causal LM's weights, and its tokenizer.

    The score head is new (initialised from ``seed``), unless the base already is a one-label
    classifier: then training continues from it. The tokenizer gets a pad token (EOS when
    it has none) and truncates on the left, as the ``reward_model`` reward does.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(base)
    torch.manual_seed(seed)
    if path is None:  # tiny-random: the same seeded causal LM the trainer would start from
        causal, tokenizer = tiny_random_model(seed)
        config: Any = copy.deepcopy(causal.config)
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        loaded = model.load_state_dict(causal.state_dict(), strict=False)  # not lm_head, score
        if any(not key.startswith("score.") for key in loaded.missing_keys):
            raise RuntimeError(f"tiny-random: backbone weights not carried over: {loaded}")
    else:
        tokenizer = load_tokenizer(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=torch.float32
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    tokenizer.truncation_side = "left"  # keep the end of the conversation: the reply
    return model, tokenizer


def score_texts(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int) -> Tensor:
    """``[N]`` rewards of ``N`` rendered conversations, tokenized as the reward tokenizes them."""
    batch = encode_conversations(tokenizer, texts, max_length, next(model.parameters()).device)
    logits: Tensor = model(**batch).logits  # [N, 1]
    return logits[:, 0].float()


def pair_rewards(
    model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], max_length: int
) -> tuple[Tensor, Tensor]:
    """``([B], [B])``: the rewards of each pair's chosen and rejected conversation."""
    texts = [render_conversation(tokenizer, p.prompt, p.chosen) for p in pairs]
    texts += [render_conversation(tokenizer, p.prompt, p.rejected) for p in pairs]
    rewards = score_texts(model, tokenizer, texts, max_length)  # [2B]
    return rewards[: len(pairs)], rewards[len(pairs) :]


@torch.no_grad()
def evaluate_pairs(
    model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], batch_size: int, max_length: int
) -> dict[str, float]:
    """Pairwise ``accuracy`` and mean Bradley-Terry ``loss`` over ``pairs`` (eval mode)."""
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        c, r = pair_rewards(model, tokenizer, pairs[start : start + batch_size], max_length)
        chosen.append(c)
        rejected.append(r)
    c_all, r_all = torch.cat(chosen), torch.cat(rejected)  # [n], [n]
    return {
        "accuracy": pairwise_accuracy(c_all, r_all),
        "loss": float(bradley_terry_loss(c_all, r_all)),
    }


def train_epoch(
    model: nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    pairs: Sequence[Pair],
    *,
    batch_size: int,
    max_length: int,
    seed: int,
) -> float:
    """One pass over ``pairs`` in a ``seed``-shuffled order; returns the mean training loss."""
    model.train()
    order = list(pairs)
    random.Random(seed).shuffle(order)
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        chosen, rejected = pair_rewards(model, tokenizer, batch, max_length)
        loss = bradley_terry_loss(chosen, rejected)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
    return total / len(order)


def check_output_dir(out: str | Path) -> Path:
    """``out`` as a path, if it may be written: new, empty, or an earlier reward model."""
    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / METADATA_FILE).exists():
        raise ValueError(
            f"--out: {target} is not empty and holds no {METADATA_FILE} (not a reward model "
            "written by this command); choose a new or empty directory"
        )
    return target


def save_reward_model(
    model: nn.Module, tokenizer: Any, target: Path, metadata: dict[str, Any]
) -> Path:
    """Write the model, tokenizer and ``reward_model.json`` to a temporary directory beside
    ``target``, then rename it into place (an earlier ``target`` is replaced only then)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-shard progress bar in the command's output

    def disk_full() -> str:
        return f"no space left on device while writing the reward model to {target}"

    with atomic_directory(target, disk_full) as tmp:
        model.save_pretrained(str(tmp))  # type: ignore[operator]
        tokenizer.save_pretrained(str(tmp))
        text = json.dumps(metadata, indent=2) + "\n"
        (tmp / METADATA_FILE).write_text(text, encoding="utf-8")
    return target


def train_reward_model(
    args: RewardModelArgs, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train and save a reward model (see the module docstring); returns the metrics.

    Metrics: ``train_pairs``, ``eval_pairs``, ``eval_accuracy_before`` / ``_after`` and
    ``eval_loss_before`` / ``_after`` (held-out pairwise accuracy and Bradley-Terry loss),
    ``epochs`` (per epoch: mean training loss and held-out accuracy and loss), ``wall_time_s``.
    ``log`` receives one line per epoch.
    """
    start = time.perf_counter()
    say = log or (lambda _: None)
    args.check()
    target = check_output_dir(args.out)
    train, held = split_pairs(load_pairs(args.pairs), args.eval_fraction, args.seed)
    model, tokenizer = load_base(args.base, args.seed)
    model.to(pick_device("auto"))
    sizes = {"batch_size": args.batch_size, "max_length": args.max_length}
    before = evaluate_pairs(model, tokenizer, held, **sizes)
    say(f"before: held-out accuracy {before['accuracy']:.1%}, loss {before['loss']:.4f}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    epochs, after = [], before
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(model, tokenizer, optimizer, train, seed=args.seed + epoch, **sizes)
        after = evaluate_pairs(model, tokenizer, held, **sizes)
        evals = {f"eval_{key}": value for key, value in after.items()}
        epochs.append({"epoch": epoch, "train_loss": loss, **evals})
        say(
            f"epoch {epoch}/{args.epochs}: train loss {loss:.4f}, held-out accuracy "
            f"{after['accuracy']:.1%}, loss {after['loss']:.4f}"
        )
    metrics = {
        "train_pairs": len(train),
        "eval_pairs": len(held),
        "eval_accuracy_before": before["accuracy"],
        "eval_accuracy_after": after["accuracy"],
        "eval_loss_before": before["loss"],
        "eval_loss_after": after["loss"],
        "epochs": epochs,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    arguments = {**asdict(args), "pairs": str(Path(args.pairs).expanduser().resolve())}
    save_reward_model(model, tokenizer, target, {"metrics": metrics, "args": arguments})
    return metrics


def reward_model_main(namespace: argparse.Namespace) -> int:
    """``groupwise reward-model``: train, print the held-out accuracy, return the exit code."""
    args = RewardModelArgs(
        pairs=namespace.pairs,
        base=namespace.base,
        out=namespace.out,
        epochs=namespace.epochs,
        lr=namespace.lr,
        batch_size=namespace.batch_size,
        eval_fraction=namespace.eval_fraction,
        seed=namespace.seed,
        max_length=namespace.max_length,
    )
    metrics = train_reward_model(args, log=lambda line: print(line, file=sys.stderr))
    before, after = metrics["eval_accuracy_before"], metrics["eval_accuracy_after"]
    print(
        f"held-out pairwise accuracy: {before:.1%} before -> {after:.1%} after "
        f"({metrics['eval_pairs']} pairs); reward model in {Path(args.out).expanduser()}"
    )
    return 0
