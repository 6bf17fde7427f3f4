"""A rollout engine in its own process: :class:`EngineProcess` wraps any registered engine.

``rollout.engine_process=true`` (or ``rollout.max_staleness=1``, which needs it) builds the
configured engine in a child process started with the ``spawn`` context. The child decodes a
copy of the policy's weights that lives in shared memory (``share_memory_()``: both processes map
the same pages, nothing is pickled per step); the trainer writes the new weights into it after
each update (:meth:`EngineProcess.sync_weights`), only while the child is idle, and then tells the
child's engine to take them (``sync_weights`` there: the ``llamacpp`` engine rewrites its GGUF
file from the shared copy; the ``local`` engine has nothing to do).

Commands go over a pipe, pickled, and are answered in order:

- ``generate(prompts, request)`` -> the :class:`~groupwise.rollout.records.Rollout`. A
  ``torch.Generator`` cannot cross the boundary, so its state (``get_state()``) goes with the
  request; the child draws from a generator set to that state and returns the state it ended in,
  which the trainer's generator then takes: the draws are exactly those the same sequence of calls
  makes in one process;
- ``sync`` -> the child's engine takes the weights of the shared copy;
- ``close``.

:meth:`EngineProcess.submit` and :meth:`EngineProcess.result` split ``generate`` so the trainer
can work while the child decodes (one-step-off generation, ``groupwise.train.rollouts``). Every
wait on the child polls its liveness: a child that exits raises :class:`RolloutEngineDied`, never
a hang. Spawned children import the parent's main module again (``multiprocessing``'s rule), so a
script that trains this way keeps its top-level work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import importlib
import pickle
import signal
import time
import traceback
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from groupwise.kernels.attention import register_grouped_attention
from groupwise.rollout.engine import ENGINES, EngineContext, RolloutEngine, RolloutRequest
from groupwise.rollout.records import PromptBatch, Rollout

POLL_SECONDS = 0.2
"""How often a wait on the child checks that it is still alive."""
START_TIMEOUT = 600.0
"""Seconds the child may take to import and build its engine before the trainer gives up."""


class RolloutEngineDied(RuntimeError):
    """The rollout engine's process exited (killed, out of memory, crashed) while the trainer
    waited for it. ``checkpoint`` (set by the trainer) names where the run resumes from."""

    def __init__(self, pid: int | None, exitcode: int | None, during: str) -> None:
        self.pid, self.exitcode, self.during = pid, exitcode, during
        self.checkpoint: str | None = None
        super().__init__(self._message())

    def _message(self) -> str:
        where = (
            f"from checkpoint {self.checkpoint}"
            if self.checkpoint
            else "from the last checkpoint (none was written yet: the run starts over)"
        )
        return (
            f"the rollout engine process (pid {self.pid}) exited with code {self.exitcode} "
            f"during {self.during}; resume with the same command plus training.resume=auto "
            f"(resume=auto) {where}"
        )

    def resume_point(self, checkpoint: str | Path | None) -> RolloutEngineDied:
        """This error, naming ``checkpoint`` as the point the run resumes from."""
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.args = (self._message(),)
        return self


class ProcessWeights:
    """The child's :class:`~groupwise.rollout.weights.RolloutWeights`: the shared copy, which the
    trainer keeps up to date, so ``sync`` and ``active`` have nothing to do."""

    name = "process"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def sync(self) -> None:
        """Nothing: the trainer wrote the weights into the shared copy."""

    def active(self) -> Any:
        """No preparation."""
        return nullcontext()


@dataclass
class EngineSpec:
    """What the child needs to build the engine (everything picklable)."""

    name: str
    """The registered engine (``rollout.engine``)."""
    tokenizer: Any
    """The policy's tokenizer."""
    eos_token_ids: Sequence[int]
    """Token ids that end a completion."""
    threads: int
    """``torch.set_num_threads`` of the child."""
    compile_decode: bool = False
    """``rollout.compile``."""
    options: dict[str, Any] = field(default_factory=dict)
    """``rollout.engine_kwargs``."""
    packed_decode: bool = True
    """``rollout.packed_decode``."""
    native_kernels: bool = False
    """The run plan's ``rollout.native_kernels``."""
    module: str | None = None
    """The module that registers the engine (imported by the child first)."""


def _build_child_engine(spec: EngineSpec, model: nn.Module) -> RolloutEngine:
    """The engine of ``spec`` on the shared ``model``, built in the child."""
    torch.set_num_threads(spec.threads)
    register_grouped_attention()  # the model may name groupwise's attention kernel
    if spec.module and spec.module not in ("__main__", "__mp_main__"):
        importlib.import_module(spec.module)
    # flagged as the policy's weights are: here SmolLM2 decoded 25-50% slower with frozen
    # (requires_grad=False) weights, the same tokens (nothing computes a gradient: no_grad)
    model.requires_grad_(True)
    weights = ProcessWeights(model)
    context = EngineContext(
        model,
        weights,
        spec.tokenizer,
        spec.eos_token_ids,
        spec.compile_decode,
        spec.options,
        packed_decode=spec.packed_decode,
        native_kernels=spec.native_kernels,
    )
    return ENGINES.get(spec.name)(context)


def _generate(engine: RolloutEngine, message: tuple[Any, ...]) -> tuple[Rollout, Any]:
    """One generate command: the rollout and the generator state it ended in."""
    _, prompts, request, state = message
    generator = None
    if state is not None:
        generator = torch.Generator(device=prompts.input_ids.device)
        generator.set_state(state)
    rollout = engine.generate(prompts, replace(request, generator=generator))
    return rollout, None if generator is None else generator.get_state()


def serve(conn: Any, spec: EngineSpec, model: nn.Module) -> None:
    """The child's loop: build the engine, then answer each command in order until ``close``
    or until the trainer's end of the pipe closes (the trainer exited). Ctrl-C reaches the whole
    process group: the child ignores it, so the trainer can finish its step and checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = _build_child_engine(spec, model)
        conn.send_bytes(pickle.dumps(("ok", None)))
    except Exception:
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
        return
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message[0] == "close":
            return
        try:
            if message[0] == "generate":
                reply: tuple[Any, ...] = ("ok", _generate(engine, message))
            else:  # sync
                engine.sync_weights()
                reply = ("ok", None)
        except Exception:
            reply = ("error", traceback.format_exc())
        try:
            conn.send_bytes(pickle.dumps(reply))
        except OSError:  # the trainer is gone
            return


def share_model(model: nn.Module) -> nn.Module:
    """``model`` (a plain, non-peft inference model) with its parameters and buffers moved to
    shared memory in place, and no per-instance ``forward`` overrides (the fused training
    kernels route only gradient-enabled calls; a decoding copy does not need them and bound
    methods do not pickle)."""
    for module in model.modules():
        module.__dict__.pop("forward", None)
    model.share_memory()
    return model


class EngineProcess:
    """A :class:`~groupwise.rollout.engine.RolloutEngine` whose engine runs in a child process.

    ``weights``: the trainer's rollout weights; their ``model`` must be a copy of the policy
    (the ``copy`` strategy), which is moved to shared memory and becomes the child's model, and
    their ``sync`` writes the policy's new weights into it.
    """

    def __init__(self, spec: EngineSpec, weights: Any) -> None:
        self.weights = weights
        self.spec = spec
        model = share_model(weights.model)
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=serve, args=(child, spec, model), name="groupwise-rollout", daemon=True
        )
        self.process.start()
        child.close()
        self.pending: deque[tuple[str, RolloutRequest | None]] = deque()
        self._finalizer = weakref.finalize(self, _shutdown, self.process, self.conn)
        self._reply("start", START_TIMEOUT)

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self.process.pid

    # ------------------------------------------------------------------ the engine protocol
    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """See :meth:`RolloutEngine.generate` (decoded by the child; waits for it)."""
        self.submit(prompts, request)
        return self.result()

    def sync_weights(self) -> None:
        """Once the child is idle, write the policy's weights into the shared copy; the child's
        engine takes them before its next command (nothing is waited for)."""
        self.drain()
        self.weights.sync()
        self._send(("sync",), "sync")
        self.pending.append(("sync", None))

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Nothing to prepare here: the child's engine prepares each call."""
        yield

    # ------------------------------------------------------------------ asynchronous use
    def submit(self, prompts: PromptBatch, request: RolloutRequest) -> None:
        """Queue a generation; :meth:`result` returns it (the child decodes meanwhile)."""
        gen = request.generator
        state = None if gen is None else gen.get_state()
        message = ("generate", prompts, replace(request, generator=None), state)
        self._send(message, "generate")
        self.pending.append(("generate", request))

    def result(self) -> Rollout:
        """The oldest pending generation's rollout (waiting for it); its request's generator
        takes the state the child's generator ended in."""
        while self.pending:
            kind, request = self.pending.popleft()
            value = self._reply(kind)
            if kind == "generate":
                assert request is not None
                rollout, state = value
                if request.generator is not None and state is not None:
                    request.generator.set_state(state)
                return rollout
        raise RuntimeError("EngineProcess.result: no generation is pending (submit one first)")

    def drain(self) -> None:
        """Wait for every pending command (e.g. a sync) other than generations, in order; a
        pending generation is an error (its rollout would be lost)."""
        while self.pending:
            if self.pending[0][0] == "generate":
                raise RuntimeError(
                    "EngineProcess: a generation is pending; take it with result() first"
                )
            kind, _ = self.pending.popleft()
            self._reply(kind)

    def close(self) -> None:
        """Stop the child (it is also stopped when this object is collected)."""
        self._finalizer()

    # ------------------------------------------------------------------ the pipe
    def _send(self, message: tuple[Any, ...], what: str) -> None:
        try:
            self.conn.send_bytes(pickle.dumps(message))
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            self.process.join(timeout=5)
            raise self._died(what) from exc

    def _reply(self, what: str, timeout: float | None = None) -> Any:
        """The next reply, polling the child's liveness while waiting."""
        start = time.monotonic()
        while not self.conn.poll(POLL_SECONDS):
            if not self.process.is_alive():
                raise self._died(what)
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(
                    f"the rollout engine process (pid {self.pid}) did not start its "
                    f"{self.spec.name} engine within {timeout:.0f} s"
                )
        try:
            status, value = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self.process.join(timeout=5)
            raise self._died(what) from exc
        if status == "error":
            raise RuntimeError(
                f"the rollout engine ({self.spec.name}, process {self.pid}) failed during "
                f"{what}:\n{value}"
            )
        return value

    def _died(self, what: str) -> RolloutEngineDied:
        self.process.join(timeout=5)
        self.pending.clear()
        return RolloutEngineDied(self.pid, self.process.exitcode, what)


def _shutdown(process: Any, conn: Any) -> None:
    """Ask the child to stop, then make sure it does."""
    try:
        if process.is_alive():
            conn.send_bytes(pickle.dumps(("close",)))
    except (OSError, ValueError):
        pass
    process.join(timeout=10)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)
    conn.close()
