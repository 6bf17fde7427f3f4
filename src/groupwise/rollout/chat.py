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
  the first tool's own schema, then (:meth:`ChatFormat.worked_exchange`) one worked exchange as
  earlier turns before the first user message: a question, the call, the tool's real result,
  the answer (a small model given only the protocol's description rarely calls; SmolLM2's
  template ignores ``tools=``).
- **an environment message** (:meth:`ChatFormat.message_ids`): the template's rendering of that
  message after an assistant turn, generation prompt included; tool results
  (:meth:`ChatFormat.reply_ids`), where the template renders an assistant message's
  ``tool_calls``, as its rendering of one ``tool`` message per call after such a message (the
  policy's own tokens are never re-rendered; only the text after its EOS is new).
- **tool calls** (:attr:`ChatFormat.tool_format`): read in the format the template writes
  ``tool_calls`` in, or the one named by ``rollout.engine_kwargs.tool_format``
  (:mod:`groupwise.envs.formats`); earlier ``<tool_call>`` turns of a prompt reach such a
  template as structured ``tool_calls`` (:func:`structured_messages`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from groupwise.envs import EnvStep, Tool
from groupwise.envs.formats import (
    HERMES,
    TOOL_FORMATS,
    TokenizerParser,
    ToolFormat,
    has_response_parser,
)
from groupwise.envs.tools import tools_instructions, worked_exchange

_REPLY, _MESSAGE = "\x1fREPLY\x1f", "\x1fMESSAGE\x1f"
_USER = {"role": "user", "content": "hi"}
_PROBE_CALL = {"type": "function", "function": {"name": "probe_tool", "arguments": {"n": 7}}}
_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)
_RESPONSE_BLOCK = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)


class ChatFormat:
    """Renders environment messages and prompts the way the tokenizer's chat template does."""

    def __init__(
        self, tokenizer: Any, eos_token_ids: Sequence[int], tool_format: str = "auto"
    ) -> None:
        if tool_format != "auto" and tool_format not in TOOL_FORMATS:
            raise ValueError(
                f"rollout.engine_kwargs.tool_format={tool_format!r} is unknown; valid: auto, "
                f"{', '.join(TOOL_FORMATS)}"
            )
        self.tokenizer = tokenizer
        self.eos_texts = [tokenizer.decode([i]) for i in eos_token_ids]
        self.format_name = tool_format
        self._frames: dict[str, tuple[str, str]] = {}
        self._renders_tools: bool | None = None
        self._rendered_call: str | None = None
        self._tool_format: ToolFormat | None = None
        self._markers: dict[int, str] | None = None
        self._exchanges: dict[str, list[dict[str, str]]] = {}

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

    def rendered_call(self) -> str:
        """What the chat template renders for a conversation whose assistant message has a
        ``tool_calls`` field (a probe call), or "" when it renders no call (no template, the
        field ignored, or the template fails on it)."""
        if self._rendered_call is None:
            self._rendered_call = ""
            if self.templated:
                message = {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}
                try:
                    text = self._apply([_USER, message], add_generation_prompt=False)
                except Exception:
                    text = ""
                self._rendered_call = text if "probe_tool" in text else ""
        return self._rendered_call

    def renders_tool_calls(self) -> bool:
        """The chat template renders an assistant message's ``tool_calls`` (structured calls
        and ``tool`` messages are then rendered by it, see :meth:`reply_ids`)."""
        return bool(self.rendered_call())

    def detected_format(self) -> str | None:
        """The text protocol the template writes calls in: ``mistral`` (``[TOOL_CALLS]``),
        ``hermes`` (``<tool_call>``), ``llama3`` (``<|python_tag|>`` or ``"parameters"``), or
        None (it renders no calls, or in a protocol not known here)."""
        text = self.rendered_call()
        if "[TOOL_CALLS]" in text:
            return "mistral"
        if "<tool_call>" in text:
            return "hermes"
        if "<|python_tag|>" in text or '"parameters"' in text:
            return "llama3"
        return None

    @property
    def tool_format(self) -> ToolFormat:
        """How the policy's calls are read: the named format, or under ``auto`` the detected
        one (default ``hermes``), read first by the tokenizer's own response parser when it has
        one (:class:`~groupwise.envs.formats.TokenizerParser`)."""
        if self._tool_format is None:
            auto = self.format_name == "auto"
            name = (self.detected_format() or HERMES.name) if auto else self.format_name
            fmt = TOOL_FORMATS[name]
            if auto and has_response_parser(self.tokenizer):
                fmt = TokenizerParser(self.tokenizer, fmt)
            self._tool_format = fmt
        return self._tool_format

    def attach(self, env: Any) -> None:
        """Give ``env`` the tool format, when it reads tool calls (``set_tool_format``)."""
        setter = getattr(env, "set_tool_format", None)
        if callable(setter):
            setter(self.tool_format)

    def policy_text(self, ids: Sequence[int]) -> str:
        """The text of a policy turn, special tokens skipped except the tool format's markers
        (e.g. Mistral's ``[TOOL_CALLS]``, where the tokenizer holds it as a special token)."""
        markers = self._marker_ids()
        decode = self.tokenizer.decode
        if not any(i in markers for i in ids):
            text: str = decode(list(ids), skip_special_tokens=True)
            return text
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in markers:
                pieces += [decode(run, skip_special_tokens=True), markers[i]]
                run = []
            else:
                run.append(i)
        return "".join([*pieces, decode(run, skip_special_tokens=True)])

    def _marker_ids(self) -> dict[int, str]:
        """The format's markers that are one token the skipping decode would drop."""
        if self._markers is None:
            self._markers = {}
            for marker in self.tool_format.markers:
                ids = self.tokenizer(marker, add_special_tokens=False)["input_ids"]
                if len(ids) == 1 and not self.tokenizer.decode(ids, skip_special_tokens=True):
                    self._markers[ids[0]] = marker
        return self._markers

    def reply_ids(self, step: EnvStep, role: str) -> list[int]:
        """Token ids of the environment's answer ``step`` after the policy's EOS: its
        ``tool_messages`` as the template renders ``tool`` messages after an assistant message
        with as many ``tool_calls`` (when it renders tool calls; consecutive tool messages as
        it groups them), else :meth:`message_ids` of its text in ``role``. A template that
        fails on the structured messages (e.g. rejects ``tool``, or several calls) gets the
        text too."""
        if step.tool_messages and self.renders_tool_calls():
            tail = _tool_tail(self._apply, self.eos_texts, step.tool_messages)
            if tail is not None:
                ids: list[int] = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
                return ids
        return self.message_ids(step.message or "", role)

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
        if self.renders_tool_calls():
            messages = structured_messages(messages)
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
        system = tools_instructions(tools, self.tool_format)
        if messages[0].get("role") == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{system}"
        else:
            messages.insert(0, {"role": "system", "content": system})
        if not any(m.get("role") == "assistant" for m in messages):
            at = next(
                (k for k, m in enumerate(messages) if m.get("role") != "system"), len(messages)
            )
            messages[at:at] = self.worked_exchange(tools)
        return self._apply(messages)

    def worked_exchange(self, tools: Sequence[Tool]) -> list[dict[str, str]]:
        """The worked exchange shown before the first user message when the template ignores
        ``tools=`` (:func:`groupwise.envs.tools.worked_exchange`, in :attr:`tool_format`; its
        example call runs once per tool and format, then the messages are reused)."""
        if not tools:
            return []
        key = f"{self.tool_format.name}:{json.dumps(tools[0].schema(), sort_keys=True)}"
        if key not in self._exchanges:
            self._exchanges[key] = worked_exchange(tools, self.tool_format)
        return [dict(m) for m in self._exchanges[key]]

    def _apply(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kw: Any
    ) -> str:
        text: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
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
                protocol = getattr(self.tool_format, "fallback", self.tool_format).name
                shown = "one worked call"
                if self.templated and self.worked_exchange(tools):
                    shown += f", then a worked exchange with {tools[0].name} as earlier turns"
                lines.append(
                    f"episodes: tools ({names}) described in {where}: the {protocol} protocol "
                    f"and {shown} (the chat template does not render tools=)"
                )
            lines.append(self._describe_calls())
        return lines

    def _describe_calls(self) -> str:
        """How calls are read and results rendered, for the run log."""
        how = "set by tool_format" if self.format_name != "auto" else "detected"
        if self.format_name == "auto" and self.detected_format() is None:
            how = "the default: the chat template renders no known tool-call format"
        results = (
            "tool results as the template's tool messages"
            if self.renders_tool_calls()
            else "tool results as one message of the environment's role"
        )
        return f"episodes: tool calls read as {self.tool_format.name} ({how}); {results}"


def _tool_tail(
    apply: Callable[[list[dict[str, Any]]], str],
    eos_texts: Sequence[str],
    messages: Sequence[Mapping[str, Any]],
) -> str | None:
    """The text the template (``apply`` renders messages) gives ``messages`` (tool results)
    after an assistant turn that made one call per message, up to the next generation prompt: everything
    after the first EOS text that follows the assistant's header."""
    ids = [f"call{k:05d}" for k in range(len(messages))]  # 9 characters, as Mistral's
    calls = [
        {
            "type": "function",
            "id": i,
            "function": {"name": m.get("name", "tool"), "arguments": {}},
        }
        for i, m in zip(ids, messages, strict=True)
    ]
    results = [{**m, "tool_call_id": i} for i, m in zip(ids, messages, strict=True)]
    assistant = {"role": "assistant", "content": _REPLY, "tool_calls": calls}
    try:
        head = apply([_USER])
        full = apply([_USER, assistant, *results])
    except Exception:
        return None
    start = next(
        (k for k, (a, b) in enumerate(zip(head, full, strict=False)) if a != b),
        min(len(head), len(full)),
    )  # the assistant's turn starts after what both share
    ends = [(full.find(e, start), e) for e in eos_texts if e and e in full[start:]]
    if not ends:
        return None
    at, eos = min(ends)
    return full[at + len(eos) :]


def structured_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as a chat template that renders tool calls takes them: an assistant
    message whose text is ``<tool_call>`` blocks (and other text) gets them as a structured
    ``tool_calls`` field (``{"type": "function", "function": {"name", "arguments"}}``) and
    keeps the other text as its content; a ``tool`` message made of ``<tool_response>`` blocks
    becomes one ``tool`` message per block, unwrapped (the template wraps results itself);
    arguments given as a JSON string (OpenAI's shape) become the object templates expect.
    Messages with a malformed call stay as they are."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role == "assistant" and not m.get("tool_calls") and isinstance(content, str):
            calls = HERMES.parse(content)
            if calls and all(c.error is None for c in calls):
                structured = [
                    {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
                rest = _CALL_BLOCK.sub("", content).strip()
                out.append({**m, "content": rest, "tool_calls": structured})
                continue
        if role == "tool" and isinstance(content, str):
            blocks = _RESPONSE_BLOCK.findall(content)
            if blocks and not _RESPONSE_BLOCK.sub("", content).strip():
                out.extend({**m, "content": b} for b in blocks)
                continue
        out.append(_object_arguments(m))
    return out


def _object_arguments(message: Mapping[str, Any]) -> dict[str, Any]:
    """``message`` with each ``tool_calls`` entry's JSON-string arguments decoded."""
    out = dict(message)
    if not message.get("tool_calls"):
        return out
    calls = []
    for call in message["tool_calls"]:
        fn = call.get("function") if isinstance(call, Mapping) else None
        args = fn.get("arguments") if isinstance(fn, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                call = {**call, "function": {**fn, "arguments": json.loads(args)}}
        calls.append(call)
    out["tool_calls"] = calls
    return out
