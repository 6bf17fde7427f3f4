"""A run's final policy through GGUF and back: what each export type keeps of its answers.

    python benchmarks/gguf_roundtrip.py RUN_DIR --types bf16,f16,q8_0,q4_k_m --result NAME

Reference: the final directory's greedy answers on the run's held-out prompts through
groupwise's own evaluation (the task's eval rows, the chat template, the run's
``eval.max_new_tokens``, the run's rollout engine). Per type, the policy is exported with
``groupwise export`` (timed: the writer's, or the f32 file's and llama.cpp quantizer's, seconds;
the file's bytes and the tensor types it really holds), loaded with llama-cpp-python
(:func:`groupwise.models.gguf.llama.open_llama`, all cores) and greedy-decoded on the same
prompt token ids. Reported per type: held-out accuracy (the task's correctness function),
identical extracted answers against the reference (count of N; the answer as maj@k extracts it:
the last number when the reference is a number, else the last line), the token-identical share
(the same completion tokens: compared as the same decoded text), export seconds, bytes,
per-tensor type counts. Then the GGUF of the run's own parameter dtype (``f32`` or ``bf16``) is
loaded back into groupwise as ``model.name`` and evaluated as the final directory is.

The result (``benchmarks/results/NAME.json``) names the CPU as the other benchmarks do
(:func:`harness.write_result`). The GGUF files go to ``--out`` (default: a temporary
directory, removed at the end). On the tiny-random test run (8 prompts) it takes a minute;
on the default run's 200 prompts, mostly llama.cpp's decoding of each type.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import command_line, write_result

OWN_TYPES = {"float32": "f32", "bfloat16": "bf16"}
"""The GGUF type that holds a run's weights exactly, by ``training.param_dtype``."""


def groupwise_greedy(model_name: str, config: Any) -> tuple[Any, list[Any], Any]:
    """(EvalResult, held-out rows, tokenizer) of ``model_name`` through groupwise's evaluation."""
    from groupwise.eval.evaluate import evaluate_greedy, load_for_eval

    loaded = load_for_eval(model_name, config)
    result = evaluate_greedy(loaded, config)
    return result, list(loaded.task.eval), (loaded.tokenizer, loaded.task.correctness)


def llama_greedy(path: Path, tokenizer: Any, rows: list[Any], max_new_tokens: int) -> list[str]:
    """Greedy completions of every held-out prompt by llama.cpp (the same prompt token ids)."""
    from groupwise.models.gguf.llama import open_llama
    from groupwise.rollout.records import render_prompt

    llm = open_llama(path, n_ctx=2048, threads=os.cpu_count() or 1)
    texts = []
    for row in rows:
        ids = tokenizer(render_prompt(tokenizer, row["prompt"]), add_special_tokens=False)
        llm.reset()
        out = llm.create_completion(
            ids["input_ids"],
            max_tokens=max_new_tokens,
            temperature=0.0,
            top_k=1,
            repeat_penalty=1.0,
        )
        texts.append(str(out["choices"][0]["text"]))
    llm.close()
    return texts


def compare(
    texts: list[str], reference: list[str], rows: list[Any], correctness: Any
) -> dict[str, Any]:
    """Accuracy of ``texts``, identical extracted answers and identical completions."""
    from groupwise.eval.evaluate import voted_answer
    from groupwise.rollout.records import row_columns

    prompts = [row["prompt"] for row in rows]
    scores = correctness(prompts=prompts, completions=texts, **row_columns(rows))
    answers = [str(r.get("answer", "")) for r in rows]
    same_answer = sum(
        voted_answer(t, a) == voted_answer(r, a)
        for t, r, a in zip(texts, reference, answers, strict=True)
    )
    same_text = sum(t == r for t, r in zip(texts, reference, strict=True))
    n = len(rows)
    return {
        "accuracy": sum(float(s or 0.0) for s in scores) / max(n, 1),
        "identical_answers": same_answer,
        "token_identical_share": same_text / max(n, 1),
        "n": n,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run (config.yaml, final/)")
    parser.add_argument("--types", default="bf16,f16,q8_0,q4_k_m")
    parser.add_argument("--out", help="where the GGUF files go (default: a temporary directory)")
    parser.add_argument("--result", help="benchmarks/results/<NAME>.json")
    args = parser.parse_args(argv)

    import json

    from groupwise.config import load_config
    from groupwise.eval.evaluate import evaluate_model
    from groupwise.export.gguf import export_gguf

    run = Path(args.run_dir)
    config = load_config(run / "config.yaml")
    summary = json.loads((run / "summary.json").read_text())
    own = OWN_TYPES[(summary.get("precision") or {}).get("param_dtype", "float32")]
    reference, rows, (tokenizer, correctness) = groupwise_greedy(str(run / "final"), config)
    print(f"final directory: held-out accuracy {reference.accuracy:.1%} on {len(rows)}")
    figures: dict[str, Any] = {
        "run_dir": str(run),
        "task": config.data.task,
        "held_out": len(rows),
        "max_new_tokens": config.eval.max_new_tokens,
        "final_accuracy": reference.accuracy,
        "types": {},
    }
    types = [t for t in args.types.split(",") if t]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        for kind in dict.fromkeys([*types, own]):
            (file,) = export_gguf(run, [kind], out, log=None)[:1]
            row: dict[str, Any] = {
                "export_s": round(file.seconds, 2),
                "bytes": file.bytes,
                "tensor_types": file.tensor_types,
            }
            if kind in types:
                start = time.perf_counter()
                texts = llama_greedy(file.path, tokenizer, rows, config.eval.max_new_tokens)
                row.update(compare(texts, reference.completions, rows, correctness))
                row["decode_s"] = round(time.perf_counter() - start, 1)
            figures["types"][kind] = row
            print(f"{kind}: {row}")
        own_path = out / f"model.{own}.gguf"
        # the float32 directory transformers converts the file into is cached: here, not in
        # the user's cache (a temporary file would leave a model-sized entry there)
        os.environ["GROUPWISE_CACHE"] = str(Path(scratch) / "cache")
        reloaded = evaluate_model(str(own_path), config, k=1)["accuracy"]
        figures["reloaded"] = {"type": own, "accuracy": reloaded}
        print(f"{own} GGUF loaded back as model.name: held-out accuracy {reloaded:.1%}")
    figures["rows"] = [{"type": kind, **row} for kind, row in figures["types"].items()]
    write_result(args.result, figures, command=command_line())


if __name__ == "__main__":
    main()
