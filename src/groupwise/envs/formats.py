"""Tool-call formats: how the policy writes a call, and how a call is read back from its text.

Three text protocols, by name in :data:`TOOL_FORMATS`:

- ``hermes`` (the default; Hermes, Qwen 2.5 / 3): ``<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>``, one block per call (parallel calls: several blocks);
- ``llama3`` (Llama 3.1 / 3.2 / 3.3 JSON tool calling): the message is the call,
  ``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``, several calls
  separated by ``;`` (``"arguments"`` is read as well as ``"parameters"``);
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``, or the newer
  ``[TOOL_CALLS]name[ARGS]{...}`` repeated per call (an optional ``[CALL_ID]id`` before
  ``[ARGS]`` is skipped).

Each format's :meth:`ToolFormat.parse` returns one :class:`ToolCall` per call it finds; a
malformed call (bad or cut-off JSON, no name, arguments that are not an object, an unclosed
tag) is a :class:`ToolCall` carrying an ``error: ...`` text, which the environment sends back as
that call's result. :class:`TokenizerParser` reads calls with the tokenizer's own response
parser (``tokenizer.parse_response``) first, falling back to a text format.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    """One parsed call, or the error that replaces its result."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def call_from_object(data: Any, key: str = "arguments") -> ToolCall:
    """A :class:`ToolCall` from a decoded JSON object ``{"name": ..., key: {...}}`` (an error
    call when it has no string name or its arguments are not an object; arguments written as a
    JSON string are decoded)."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return ToolCall(None, error='error: a tool call needs a string "name"')
    arguments = data.get(key, data.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(data["name"], error=f'error: "{key}" must be a JSON object')
    return ToolCall(data["name"], arguments)


def _json_error(exc: json.JSONDecodeError, body: str) -> ToolCall:
    # the text ended inside the JSON (an open string reports where the string began)
    cut = exc.pos >= len(body.rstrip()) or exc.msg.startswith("Unterminated string")
    why = "cut off before its JSON ended" if cut else f"not valid JSON ({exc})"
    return ToolCall(None, error=f"error: the tool call is {why}")


class ToolFormat:
    """A tool-call text protocol (see the module docstring). Subclasses define ``name``,
    :meth:`parse` and :meth:`call_text`; ``markers`` are the protocol's tokens that a
    tokenizer may hold as special tokens (kept when the policy's turn is decoded)."""

    name = ""
    markers: tuple[str, ...] = ()
    how = ""
    """How to call, for the text protocol's instructions (:meth:`instructions`)."""

    def parse(self, text: str) -> list[ToolCall]:
        """Every call in ``text`` (none: the policy answered without a call)."""
        raise NotImplementedError

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """One call of ``name`` with ``arguments``, as the policy writes it."""
        raise NotImplementedError

    def results_text(self, results: Sequence[str]) -> str:
        """The results of one turn's calls as one message's text (in call order)."""
        return "\n".join(results)

    def instructions(self, tool_lines: str) -> str:
        """The text protocol for a chat template that does not render tools: how to call,
        then the tools' schemas (``tool_lines``, one JSON schema per line)."""
        return (
            f"You can call tools. {self.how} "
            "Answer without a tool call when you are done.\n"
            f"Available tools:\n<tools>\n{tool_lines}\n</tools>"
        )


class HermesFormat(ToolFormat):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; results come back as
    ``<tool_response>...</tool_response>`` blocks."""

    name = "hermes"
    _CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> list[ToolCall]:
        """Every ``<tool_call>{...}</tool_call>`` in ``text``; malformed ones carry an error."""
        calls: list[ToolCall] = []
        for match in self._CALL.finditer(text):
            body, closed = match.group(1).strip(), bool(match.group(2))
            if not closed:
                calls.append(ToolCall(None, error="error: unclosed <tool_call> tag"))
                continue
            try:
                data = json.loads(body)
            except json.JSONDecodeError as exc:
                error = f"error: the tool call is not valid JSON ({exc})"
                calls.append(ToolCall(None, error=error))
                continue
            calls.append(call_from_object(data))
        return calls

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""
        return f"<tool_call>{json.dumps({'name': name, 'arguments': dict(arguments)})}</tool_call>"

    def results_text(self, results: Sequence[str]) -> str:
        """One ``<tool_response>`` block per result, a line each."""
        return "\n".join(f"<tool_response>{r}</tool_response>" for r in results)

    def instructions(self, tool_lines: str) -> str:
        """The ``<tool_call>`` protocol (the wording groupwise has always used)."""
        return (
            "You can call tools. To call one, write\n"
            '<tool_call>{"name": <tool name>, "arguments": <arguments as a JSON object>}'
            "</tool_call>\n"
            "and stop; the result comes back as <tool_response>...</tool_response>. "
            "Answer without a tool call when you are done.\n"
            f"Available tools:\n<tools>\n{tool_lines}\n</tools>"
        )


def _json_objects(body: str, separators: str) -> list[Any]:
    """The JSON values of ``body``, one after another, ``separators`` (and spaces) between
    them; text after the last one is ignored. A value that does not decode ends the list with
    one error call."""
    decoder, pos = json.JSONDecoder(), 0
    out: list[Any] = []
    while True:
        while pos < len(body) and (body[pos].isspace() or body[pos] in separators):
            pos += 1
        if pos >= len(body) or body[pos] not in "{[":
            return out
        try:
            value, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as exc:
            return [*out, _json_error(exc, body)]
        out.append(value)


class Llama3Format(ToolFormat):
    """Llama 3.x JSON calls: ``{"name": ..., "parameters": {...}}`` (after an optional
    ``<|python_tag|>``), several separated by ``;``.

    A message is read as calls when it has ``<|python_tag|>`` (the calls follow it), starts
    with ``{``, or has a ``{"name":`` object (the calls start there); otherwise it is an answer.
    """

    name = "llama3"
    markers = ("<|python_tag|>",)
    how = (
        "To call one, write only\n"
        '{"name": <tool name>, "parameters": <arguments as a JSON object>}\n'
        'and stop (several calls: separated by ";"); the result comes back in the next message.'
    )
    _START = re.compile(r'\{\s*"name"\s*:')

    def parse(self, text: str) -> list[ToolCall]:
        """The calls of ``text`` (see the class docstring)."""
        tag = "<|python_tag|>"
        if tag in text:
            body = text.split(tag, 1)[1]
        elif text.lstrip().startswith("{"):
            body = text.lstrip()
        elif (match := self._START.search(text)) is not None:
            body = text[match.start() :]
        else:
            return []
        values = _json_objects(body, ";")
        if not values and body.strip():
            return [ToolCall(None, error="error: the tool call is not a JSON object")]
        return [v if isinstance(v, ToolCall) else call_from_object(v, "parameters") for v in values]

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """``{"name": ..., "parameters": {...}}``."""
        return json.dumps({"name": name, "parameters": dict(arguments)})


class MistralFormat(ToolFormat):
    """``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` or ``[TOOL_CALLS]name[ARGS]{...}``."""

    name = "mistral"
    markers = ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")
    how = (
        "To call one, write\n"
        '[TOOL_CALLS][{"name": <tool name>, "arguments": <arguments as a JSON object>}]\n'
        "and stop (several calls: more objects in the list); the result comes back in the next "
        "message."
    )

    def parse(self, text: str) -> list[ToolCall]:
        """Every call after each ``[TOOL_CALLS]`` in ``text``."""
        calls: list[ToolCall] = []
        for segment in text.split("[TOOL_CALLS]")[1:]:
            body = segment.strip()
            if body.startswith(("[", "{")):
                for value in _json_objects(body, ","):
                    items = value if isinstance(value, list) else [value]
                    calls.extend(
                        i if isinstance(i, ToolCall) else call_from_object(i) for i in items
                    )
            else:
                calls.append(self._named(body))
        return calls

    @staticmethod
    def _named(body: str) -> ToolCall:
        """``name[ARGS]{...}`` (``name[CALL_ID]id[ARGS]{...}``)."""
        if "[ARGS]" not in body:
            what = "cut off before [ARGS]" if body else "empty"
            return ToolCall(None, error=f"error: the tool call is {what}")
        name, args = body.split("[ARGS]", 1)
        name = name.split("[CALL_ID]", 1)[0].strip()
        values = _json_objects(args, "")
        if not values:
            return ToolCall(name or None, error="error: [ARGS] must be followed by a JSON object")
        if isinstance(values[0], ToolCall):
            return values[0]
        return call_from_object({"name": name, "arguments": values[0]})

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """``[TOOL_CALLS][{"name": ..., "arguments": {...}}]``."""
        return f"[TOOL_CALLS]{json.dumps([{'name': name, 'arguments': dict(arguments)}])}"


HERMES = HermesFormat()
TOOL_FORMATS: dict[str, ToolFormat] = {f.name: f for f in (HERMES, Llama3Format(), MistralFormat())}
"""The text protocols by name (``rollout.engine_kwargs.tool_format``)."""


def tool_format(name: str) -> ToolFormat:
    """The format called ``name`` (a clear error naming the valid ones)."""
    if name not in TOOL_FORMATS:
        raise ValueError(f"tool format {name!r} is unknown; valid: auto, {', '.join(TOOL_FORMATS)}")
    return TOOL_FORMATS[name]


def has_response_parser(tokenizer: Any) -> bool:
    """The tokenizer parses its own responses: transformers' ``parse_response`` with a
    ``response_template`` (transformers 5.x) or the older ``response_schema``."""
    if not callable(getattr(tokenizer, "parse_response", None)):
        return False
    schema = getattr(tokenizer, "response_template", None) or getattr(
        tokenizer, "response_schema", None
    )
    return schema is not None


class TokenizerParser(ToolFormat):
    """Calls read by the tokenizer's own response parser, ``tokenizer.parse_response`` (its
    ``tool_calls``, OpenAI-shaped); when that raises or finds none, by ``fallback``'s text
    protocol (which also reports malformed and cut-off calls). Writing calls (the worked
    call, the instructions) and results is ``fallback``'s."""

    def __init__(self, tokenizer: Any, fallback: ToolFormat) -> None:
        self.tokenizer = tokenizer
        self.fallback = fallback
        self.name = f"the tokenizer's response parser, then {fallback.name}"
        self.markers = fallback.markers

    def parse(self, text: str) -> list[ToolCall]:
        """The tokenizer's calls, else the fallback's."""
        try:
            if getattr(self.tokenizer, "response_template", None) is not None:
                parsed = self.tokenizer.parse_response(text, prefix="")
            else:  # transformers before the response templates: response_schema
                parsed = self.tokenizer.parse_response(text)
        except Exception:
            return self.fallback.parse(text)
        raw = parsed.get("tool_calls") if isinstance(parsed, Mapping) else None
        if not raw:
            return self.fallback.parse(text)
        calls = []
        for item in raw:
            fn = item.get("function", item) if isinstance(item, Mapping) else item
            calls.append(call_from_object(dict(fn) if isinstance(fn, Mapping) else fn))
        return calls

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """The fallback's call text."""
        return self.fallback.call_text(name, arguments)

    def results_text(self, results: Sequence[str]) -> str:
        """The fallback's results text."""
        return self.fallback.results_text(results)

    def instructions(self, tool_lines: str) -> str:
        """The fallback's instructions."""
        return self.fallback.instructions(tool_lines)
