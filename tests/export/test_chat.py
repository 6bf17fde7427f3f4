"""``groupwise chat``: the one-shot answer is the model's greedy continuation through its chat
template; a scripted session with ``/reset``; a reply ends at ``<|im_end|>``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from groupwise.export.chat import ChatSession, interactive
from groupwise.models import load_base_model
from tests.export.test_export import _eos_model

SRC = Path(__file__).resolve().parents[2] / "src"


def _chat(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "groupwise", "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _greedy(model: Any, tokenizer: Any, messages: list[dict[str, str]], n: int) -> str:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_the_one_shot_answer_is_the_greedy_continuation(
    trained_run: tuple[Path, dict[str, Any]],
) -> None:
    run, _ = trained_run
    prompt = "What is 2 + 3?"
    result = _chat(str(run), "--prompt", prompt, "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    model, tokenizer = load_base_model(
        str(run / "final"), seed=0, device=torch.device("cpu"), attn_implementation="eager"
    )
    want = _greedy(model.eval(), tokenizer, [{"role": "user", "content": prompt}], 6)
    assert result.stdout == want + "\n"


def test_a_scripted_session_with_reset(trained_run: tuple[Path, dict[str, Any]]) -> None:
    """Two messages, ``/reset``, the first message again: the answer after the reset is the
    answer to a fresh conversation, the same as the first."""
    run, _ = trained_run
    result = _chat(str(run), "--max-new-tokens", "4", stdin="hi\nhow are you\n/reset\nhi\n")
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split("(conversation reset)\n")
    assert after.endswith("\n") and before.startswith(after) and len(before) > len(after)


def test_a_session_forgets_on_reset_and_stops_at_eos() -> None:
    """In process: the EOS model's reply ends at once (empty), the conversation keeps user and
    assistant turns, ``/reset`` clears them, end of input ends the session."""
    model, tokenizer = _eos_model()
    session = ChatSession(model.eval(), tokenizer, max_new_tokens=50)
    assert session.reply("hello", io.StringIO()) == ""
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    out = io.StringIO()
    interactive(session, io.StringIO("/reset\nagain\n"), out)
    assert out.getvalue() == "(conversation reset)\n\n"
    assert [m["content"] for m in session.messages] == ["again", ""]
