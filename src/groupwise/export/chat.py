"""``groupwise chat``: talk to a trained policy in the terminal.

The model (a run's final policy, a checkpoint, a model directory, a ``.gguf`` file or a preset:
:mod:`groupwise.export.target`) answers through its chat template, token by token as it decodes
(a KV cache; greedy by default, ``--temperature`` samples), and stops at its EOS
(``<|im_end|>`` for ChatML models) or after ``--max-new-tokens``. ``/reset`` starts the
conversation again; Ctrl-C during a reply stops that reply (what was written stays in the
conversation), Ctrl-C or end of input at the prompt ends the chat. ``--prompt`` answers one
message and exits (for scripts).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import torch
from torch import nn

from groupwise.export.target import load_target_model, resolve_target
from groupwise.kernels.kv_cache import cache_kwargs
from groupwise.rollout.records import eos_token_ids

RESET = "/reset"
"""The command that clears the conversation."""


class ChatSession:
    """A conversation with a model: its messages, and a reply streamed per token."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.stop_ids = set(eos_token_ids(tokenizer, model))
        self.messages: list[dict[str, str]] = []

    def reset(self) -> None:
        """Forget the conversation."""
        self.messages = []

    def _next_token(self, logits: torch.Tensor) -> int:
        """Greedy (temperature 0) or a sample of softmax(logits / temperature)."""
        if self.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    @torch.no_grad()
    def tokens(self, prompt_ids: list[int]) -> Iterator[int]:
        """The reply's token ids, one at a time (the stop token is not yielded)."""
        from transformers import DynamicCache

        ids = torch.tensor([prompt_ids])
        cache = DynamicCache(config=getattr(self.model, "config", None))  # filled in place
        for _ in range(self.max_new_tokens):
            out = self.model(input_ids=ids, **cache_kwargs(self.model, cache), use_cache=True)
            token = self._next_token(out.logits[0, -1])
            if token in self.stop_ids:
                return
            yield token
            ids = torch.tensor([[token]])

    def reply(self, text: str, out: TextIO) -> str:
        """Answer ``text``, writing the reply to ``out`` as it is decoded; returns it.
        Ctrl-C stops the reply where it is."""
        self.messages.append({"role": "user", "content": text})
        prompt = self.tokenizer.apply_chat_template(
            self.messages, add_generation_prompt=True, tokenize=False
        )
        prompt_ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids: list[int] = []
        shown = ""
        try:
            for token in self.tokens(prompt_ids):
                ids.append(token)
                decoded = self.tokenizer.decode(ids, skip_special_tokens=True)
                if decoded.endswith("\ufffd"):  # a character cut between tokens: wait
                    continue
                out.write(decoded[len(shown) :])
                out.flush()
                shown = decoded
        except KeyboardInterrupt:
            out.write(" [stopped]")
        text_out = self.tokenizer.decode(ids, skip_special_tokens=True)
        out.write(text_out[len(shown) :] + "\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": text_out})
        return str(text_out)


def interactive(session: ChatSession, stdin: TextIO, out: TextIO) -> None:
    """Read messages from ``stdin`` until its end (or Ctrl-C at the prompt)."""
    tty = stdin.isatty()
    if tty:
        out.write(f"chat ({RESET} clears the conversation, Ctrl-C or Ctrl-D quits)\n")
    while True:
        if tty:
            out.write("> ")
            out.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            out.write("\n")
            return
        if not line:
            return
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == RESET:
            session.reset()
            out.write("(conversation reset)\n")
            continue
        session.reply(text, out)


def chat_main(args: argparse.Namespace) -> int:
    """``groupwise chat``."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    model, tokenizer = load_target_model(resolve_target(args.target))
    session = ChatSession(
        model,
        tokenizer,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    if args.prompt is not None:
        session.reply(args.prompt, sys.stdout)
        return 0
    try:
        interactive(session, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return 0
