"""How a conversation reaches the model in multi-turn rollouts: prompts, tools, environment turns.

:class:`ChatFormat` renders, with the tokenizer's chat template:

- **the prompt** (:meth:`ChatFormat.prompt_text`): a list of messages as they are; a string as
  one user message, when the tokenizer has a chat template (raw text only when it has none, or
  when the string is a prompt already rendered and decoded back from token ids), so the first
  turn is framed as the environment's replies are. (Single-turn engines keep TRL's "standard"
  format: a string prompt is raw text, :func:`groupwise.rollout.records.render_prompt`.)
- **the tools** of the environment: through the template's ``tools=`` where the template renders
  them (found by :meth:`ChatFormat.renders_tools`: a conversation rendered with and without
  ``tools=`` differs), unchanged; else in a system message with the text protocol of
  :func:`groupwise.envs.tools.tools_instructions`, which ends with one worked call built from
  the first tool's own schema (a small model given only the protocol's description rarely
  calls; SmolLM2's template ignores ``tools=``).
- **an environment message** (:meth:`ChatFormat.message_ids`): the template's rendering of that
  message after an assistant turn, generation prompt included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from groupwise.envs import Tool
from groupwise.envs.tools import tools_instructions

_REPLY, _MESSAGE = "\x1fREPLY\x1f", "\x1fMESSAGE\x1f"


class ChatFormat:
    """Renders environment messages and prompts the way the tokenizer's chat template does."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_texts = [tokenizer.decode([i]) for i in eos_token_ids]
        self._frames: dict[str, tuple[str, str]] = {}
        self._renders_tools: bool | None = None

    @property
    def templated(self) -> bool:
        """The tokenizer has a chat template."""
        return getattr(self.tokenizer, "chat_template", None) is not None

    def renders_tools(self) -> bool:
        """The chat template renders ``tools=``: a one-message conversation rendered with a
        probe tool differs from the same without it (False without a template, or when the
        template fails on ``tools=``)."""
        if self._renders_tools is None:
            self._renders_tools = False
            if self.templated:
                probe = Tool("probe", "A probe tool.", {"type": "object", "properties": {}}, print)
                messages = [{"role": "user", "content": "hi"}]
                try:
                    plain = self._apply(messages)
                    self._renders_tools = self._apply(messages, tools=[probe.schema()]) != plain
                except Exception:
                    self._renders_tools = False
        return self._renders_tools

    def message_ids(self, text: str, role: str) -> list[int]:
        """Token ids continuing a conversation after the policy's EOS with ``text`` from
        ``role``, up to and including the generation prompt of the next policy turn."""
        if role not in self._frames:
            self._frames[role] = self._frame(role)
        before, after = self._frames[role]
        ids: list[int] = self.tokenizer(before + text + after, add_special_tokens=False)[
            "input_ids"
        ]
        return ids

    def _frame(self, role: str) -> tuple[str, str]:
        if not self.templated:
            return "\n", "\n"
        messages = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": _REPLY},
            {"role": role, "content": _MESSAGE},
        ]
        try:
            full = self._apply(messages)
        except Exception:  # a template without this role: the user says it
            if role == "user":
                raise
            before, after = self._frame("user")
            return before + f"<{role}>\n", f"\n</{role}>" + after
        rest = full[full.index(_REPLY) + len(_REPLY) :]
        for eos in self.eos_texts:  # the policy's turn already ends with its EOS token
            if eos and rest.startswith(eos):
                rest = rest[len(eos) :]
                break
        before, _, after = rest.partition(_MESSAGE)
        return before, after

    def prompt_text(
        self,
        prompt: Any,
        tools: Sequence[Tool],
        observation: str | None,
        rendered: bool = False,
    ) -> str:
        """The prompt with the first observation appended and the tools described.

        A string prompt is one user message rendered with the chat template; it stays raw
        text (the tools' protocol before it, the observation after it) when the tokenizer has
        no template or ``rendered`` (the string is an already rendered prompt)."""
        if isinstance(prompt, str) and (rendered or not self.templated):
            head = tools_instructions(tools) + "\n\n" if tools else ""
            return head + prompt + (f"\n{observation}" if observation else "")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        messages = [dict(m) for m in prompt]
        if observation:
            if messages and messages[-1].get("role") == "user":
                messages[-1]["content"] = f"{messages[-1]['content']}\n{observation}"
            else:
                messages.append({"role": "user", "content": observation})
        return self._render(messages, tools)

    def _render(self, messages: list[dict[str, Any]], tools: Sequence[Tool]) -> str:
        plain = self._apply(messages)
        if not tools:
            return plain
        with_tools = self._apply(messages, tools=[t.schema() for t in tools])
        if with_tools != plain:  # the template describes tools itself
            return with_tools
        system = tools_instructions(tools)
        if messages[0].get("role") == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{system}"
        else:
            messages.insert(0, {"role": "system", "content": system})
        return self._apply(messages)

    def _apply(self, messages: list[dict[str, Any]], **kw: Any) -> str:
        text: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kw
        )
        return text

    def describe(self, tools: Sequence[Tool]) -> list[str]:
        """How prompts and tools reach the model, for the run log."""
        if self.templated:
            lines = ["episodes: a string prompt goes in as one user message of the chat template"]
        else:
            lines = [
                "episodes: a string prompt goes in as raw text (the tokenizer has no chat template)"
            ]
        if tools:
            names = ", ".join(t.name for t in tools)
            if self.renders_tools():
                lines.append(f"episodes: tools ({names}) described by the chat template's tools=")
            else:
                where = "the system message" if self.templated else "the prompt"
                lines.append(
                    f"episodes: tools ({names}) described in {where}: the <tool_call> protocol "
                    "and one worked call (the chat template does not render tools=)"
                )
        return lines
