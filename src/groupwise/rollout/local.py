"""The ``local`` engine: decoding in-process with :func:`groupwise.rollout.decode.generate`,
on the weights a :class:`~groupwise.rollout.weights.RolloutWeights` strategy provides."""

from __future__ import annotations

from collections.abc import Sequence

from groupwise.rollout.decode import generate
from groupwise.rollout.engine import ENGINES, EngineContext, RolloutEngine, RolloutRequest
from groupwise.rollout.records import PromptBatch, Rollout
from groupwise.rollout.weights import RolloutWeights, ServesWeights


class LocalEngine(ServesWeights):
    """Decodes with ``weights.model`` in this process (one prefill per group, KV cache)."""

    def __init__(
        self,
        weights: RolloutWeights,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        *,
        compile_decode: bool = False,
        packed_decode: bool = True,
        native_kernels: bool = False,
    ) -> None:
        self.weights = weights
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.compile_decode = compile_decode
        self.packed_decode = packed_decode
        self.native_kernels = native_kernels

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """See :meth:`RolloutEngine.generate`; evaluation gathers the prompts' last state;
        ``request.behaviour_logp`` records the sampled tokens' log-probs (the draws unchanged)."""
        model, sampling = self.weights.model, request.sampling
        model.eval()  # it may be the policy itself (pure bf16 training)
        with self.serving():
            return generate(
                model,
                prompts,
                group_size=request.group_size,
                max_completion_length=sampling.max_tokens,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                generator=request.generator,
                min_new_tokens=sampling.min_new_tokens,
                row_offset=request.row_offset,
                total_rows=request.total_rows,
                gather_last=request.evaluation,
                compile_decode=self.compile_decode and not request.evaluation,
                behaviour_logp=request.behaviour_logp,
                packed_decode=self.packed_decode,
                native_kernels=self.native_kernels,
            )


@ENGINES.register("local")
def build_local_engine(ctx: EngineContext) -> RolloutEngine:
    """Decoding in-process on ``ctx.weights``."""
    return LocalEngine(
        ctx.weights,
        ctx.eos_token_ids,
        ctx.tokenizer.pad_token_id,
        compile_decode=ctx.compile_decode,
        packed_decode=ctx.packed_decode,
        native_kernels=ctx.native_kernels,
    )
