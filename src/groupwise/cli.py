"""The ``groupwise`` command line.

groupwise train [CONFIG.yaml] [key=value ...]   train (defaults: the built-in arithmetic run)
groupwise config [CONFIG.yaml] [key=value ...]  print the resolved config as YAML
groupwise config --reference                    print every key with its default and meaning
groupwise tasks                                 list the built-in tasks
groupwise report RUN_DIR                        write RUN_DIR/report.html and RUN_DIR/plots/
groupwise eval MODEL_OR_RUN [CONFIG] [k=v ...] [--k K] [--baseline MODEL]
                                                held-out accuracy, pass@k, maj@k as a table
groupwise reward-model PAIRS --base MODEL --out DIR [--epochs N --lr LR ...]
                                                train a Bradley-Terry reward model from pairs
groupwise export RUN_OR_DIR --gguf [--type bf16,q8_0 ...] [--out DIR] [--card]
                                                GGUF files (and the model card) of a policy
groupwise chat RUN_OR_DIR_OR_GGUF [--prompt P] [--temperature T] [--max-new-tokens N]
                                                talk to a model in the terminal
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from groupwise.config import ConfigError, config_to_dict, load_config, reference_markdown
from groupwise.recipes.reward_model import RewardModelArgs, reward_model_main
from groupwise.rewards.base import RewardError
from groupwise.run.io import DiskFullError
from groupwise.run.tracking import TrackerUnavailableError
from groupwise.train.guards import NonFiniteUpdatesError, TrainingInterrupted


def _split_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """First positional that is not key=value is the config file; the rest are overrides."""
    path: str | None = None
    overrides: list[str] = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif path is None:
            path = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: give one config file, then key=value")
    return path, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupwise", description="GRPO training for causal LMs")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model with GRPO")
    train.add_argument("args", nargs="*", help="[CONFIG.yaml] [key=value ...]")
    cfg = sub.add_parser("config", help="print the resolved config, or the reference")
    cfg.add_argument("args", nargs="*", help="[CONFIG.yaml] [key=value ...]")
    cfg.add_argument("--reference", action="store_true", help="every key, default and meaning")
    sub.add_parser("tasks", help="list the built-in tasks")
    ev = sub.add_parser("eval", help="held-out greedy accuracy, pass@k and maj@k of a model")
    ev.add_argument("target", help="a run directory (uses its final/ and config) or a model")
    ev.add_argument("args", nargs="*", help="[CONFIG.yaml] [key=value ...]")
    ev.add_argument("--k", type=int, default=1, help="samples per prompt for pass@k / maj@k")
    ev.add_argument("--baseline", help="also evaluate this model (e.g. the base) for comparison")
    rep = sub.add_parser("report", help="write RUN_DIR/report.html and plots/ from a run's logs")
    rep.add_argument("run_dir", help="a run's output_dir")
    rm = sub.add_parser("reward-model", help="train a Bradley-Terry reward model from pairs")
    rm.add_argument("pairs", help="JSONL/JSON rows {prompt, chosen, rejected}")
    rm.add_argument("--base", required=True, help="base causal LM: preset, directory or .gguf")
    rm.add_argument("--out", required=True, help="directory to write the reward model to")
    d = RewardModelArgs("", "", "")  # the defaults
    for flag, kind, value, meaning in (
        ("--epochs", int, d.epochs, "passes over the training pairs"),
        ("--lr", float, d.lr, "AdamW learning rate"),
        ("--batch-size", int, d.batch_size, "pairs per optimizer step"),
        ("--eval-fraction", float, d.eval_fraction, "share of the pairs held out"),
        ("--seed", int, d.seed, "seed of the split, the pair order and the new head"),
        ("--max-length", int, d.max_length, "tokens kept per conversation (its end)"),
    ):
        rm.add_argument(flag, type=kind, default=value, help=f"{meaning} (default: {value})")
    _export_parsers(sub)
    return parser


def _export_parsers(sub: Any) -> None:
    """``groupwise export`` and ``groupwise chat``."""
    ex = sub.add_parser("export", help="a trained policy as GGUF files, and its model card")
    ex.add_argument("target", help="a run directory (its final/), a checkpoint or a model dir")
    ex.add_argument("--gguf", action="store_true", help="write GGUF files (model.<type>.gguf)")
    ex.add_argument(
        "--type",
        action="append",
        help="GGUF types, comma-separated or repeated: f32, bf16, f16, q8_0, q4_k_m "
        "(default: bf16)",
    )
    ex.add_argument("--out", help="directory for the files (default: the model's directory)")
    ex.add_argument("--card", action="store_true", help="(re)write a run's final/README.md")
    ex.add_argument("--threads", type=int, default=0, help="quantizer threads (0 = all cores)")
    ch = sub.add_parser("chat", help="talk to a model in the terminal (streaming)")
    ch.add_argument("target", help="a run directory, checkpoint, model directory, .gguf or preset")
    ch.add_argument("--prompt", help="answer this one message and exit")
    ch.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples"
    )
    ch.add_argument("--max-new-tokens", type=int, default=256, help="reply length limit")
    ch.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may also come after the options
    (``groupwise eval RUN --k 8 eval.num_prompts=50``), which plain argparse refuses."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if any(item.startswith("-") for item in extra) or (extra and not hasattr(args, "args")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args = [*args.args, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``groupwise`` command; returns the exit code."""
    args = _parse(argv)
    try:
        if args.command == "tasks":
            from groupwise.data.tasks import TASKS

            for name in sorted(TASKS):  # the first lookup imports the built-in tasks
                doc = (TASKS.get(name).__doc__ or "").strip()
                print(f"{name}: {doc.splitlines()[0] if doc else ''}")
            return 0
        if args.command == "report":
            from groupwise.run.report import report_main

            return report_main(args.run_dir)
        if args.command == "config" and args.reference:
            print(reference_markdown())
            return 0
        if args.command == "eval":
            return _eval(args)
        if args.command == "reward-model":
            return reward_model_main(args)
        if args.command == "export":
            return _export(args)
        if args.command == "chat":
            from groupwise.export.chat import chat_main

            return chat_main(args)
        path, overrides = _split_args(args.args)
        config = load_config(path, overrides)
        if args.command == "config":
            print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
            return 0
        from groupwise.distributed import destroy_distributed, is_main
        from groupwise.train.trainer import GRPOTrainer

        try:  # under torchrun the trainer joins the process group; leave it on the way out
            summary = GRPOTrainer(config).train()
            main_rank = is_main()
        finally:
            destroy_distributed()
        if main_rank:
            _print_summary(summary)
        return 0
    except TrainingInterrupted as exc:
        print(f"groupwise: {exc}", file=sys.stderr)
        return exc.exit_code
    except (NonFiniteUpdatesError, RewardError, DiskFullError) as exc:
        print(f"groupwise: error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"groupwise: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TrackerUnavailableError) as exc:
        print(f"groupwise: error: {exc}", file=sys.stderr)
        return 2


def _eval(args: argparse.Namespace) -> int:
    from groupwise.eval.evaluate import evaluate_model, format_table, resolve_eval_target

    model, run_config = resolve_eval_target(args.target)
    path, overrides = _split_args(args.args)
    config = load_config(path or run_config, overrides)
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    results = {}
    with contextlib.redirect_stdout(sys.stderr):  # what engines log; stdout is the table
        if args.baseline:
            baseline = f"{args.baseline} (baseline)"
            results[baseline] = evaluate_model(args.baseline, config, k=args.k)
        results[args.target] = evaluate_model(model, config, k=args.k)
    print(f"{config.data.task}: {config.data.eval_size} held-out prompts")
    print(format_table(results))
    return 0


def _export(args: argparse.Namespace) -> int:
    from groupwise.export.gguf import LlamaCppMissingError, export_gguf
    from groupwise.export.target import resolve_target

    if not (args.gguf or args.card):
        raise ConfigError("groupwise export: give --gguf (GGUF files) and/or --card (model card)")
    target = resolve_target(args.target)
    if args.gguf:
        types = [t.strip() for item in (args.type or ["bf16"]) for t in item.split(",")]
        try:
            export_gguf(target, [t for t in types if t], args.out, threads=args.threads)
        except LlamaCppMissingError as exc:
            print(f"groupwise: error: {exc}", file=sys.stderr)
            return 2
    if args.card:
        from groupwise.export.card import write_model_card

        if target.kind != "run" or target.run_dir is None:
            raise ConfigError("groupwise export --card: give a run directory (it reads its logs)")
        print(f"model card: {write_model_card(target.run_dir)}")
    return 0


def _print_summary(summary: dict[str, object]) -> None:
    before, after = summary.get("eval_before"), summary.get("eval_after")
    metric = summary.get("eval_metric", "accuracy")
    if isinstance(before, float) and isinstance(after, float) and metric == "accuracy":
        print(
            f"held-out accuracy: {before:.1%} before -> {after:.1%} after "
            f"({(after - before) * 100:+.1f} points)"
        )
    elif isinstance(before, float) and isinstance(after, float):
        print(
            f"held-out {metric}: {before:.3f} before -> {after:.3f} after ({after - before:+.3f})"
        )
    print(
        f"wall time: {summary.get('wall_time_s', 0.0):.0f} s; outputs in {summary.get('run_dir')}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
