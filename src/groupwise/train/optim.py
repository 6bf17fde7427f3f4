"""Optimizers and the learning-rate schedule.

Choices:
- float32 parameters train with ``torch.optim.AdamW``.
- bfloat16 parameters (``training.param_dtype=bfloat16``, pure bf16 training) train with
  :class:`CompensatedAdamW`: AdamW whose update is added with Kahan summation, so the weight is
  held as ``p + c`` (two bf16 tensors, ~16 significant bits) and updates smaller than half a bf16
  ulp (lr 1e-5 against weights of ~0.02 are ~40x smaller) accumulate instead of rounding away.
  This is the scheme of Zamirai et al. 2020, "Revisiting BFloat16 Training" (Kahan-summed
  weight updates let pure bf16 training match float32), and torchdistx's AnyPrecisionAdamW.
  The first moment is kept in bf16 (``m = 0.9 m + 0.1 g`` is well within its precision); the
  second moment in float32, because ``v = 0.999 v + 0.001 g^2`` changes ``v`` by less than half a
  bf16 ulp, so a bf16 ``v`` would stop decaying. State: 8 bytes per parameter.
- ``training.bf16_rounding=stochastic`` trains them with :class:`StochasticRoundingAdamW`
  instead: the new weight and second moment are rounded to bf16 *stochastically* (up with
  probability equal to the fraction of the ulp below the exact value), so every rounding is
  unbiased, ``E[bf16(x)] = x``, and small updates and the ``v`` decay survive on average (Zamirai
  et al. 2020 compare it with Kahan summation; torchao's AdamW offers it as
  ``bf16_stochastic_round``). No compensation buffer and a bf16 ``v``: 4 bytes per parameter,
  for a noisier trajectory.
- ``training.bf16_rounding=kahan_sr_v`` (the default): :class:`CompensatedAdamW` with the second
  moment in bf16, rounded stochastically. The weights keep Kahan's exact accumulation (in the
  default run, stochastically rounded *weights* learned worse, docs/log.md); ``v`` only scales
  the step, and its unbiased rounding keeps the decay. 6 bytes per parameter.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn


def build_optimizer(
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    bf16_rounding: str = "kahan",
    seed: int = 0,
    compile_step: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: torch's for float32 weights; for bfloat16 weights
    (pure bf16 training) :class:`CompensatedAdamW` (``bf16_rounding="kahan"``, or
    ``"kahan_sr_v"`` with a stochastically rounded bf16 second moment) or
    :class:`StochasticRoundingAdamW` (``"stochastic"``); the rounding noise is seeded by
    ``seed``. ``compile_step``: :class:`CompensatedAdamW` runs its slices through one compiled
    kernel (``training.compile_optimizer``). Mixed dtypes are refused."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    dtypes = {p.dtype for p in trainable}
    if dtypes == {torch.bfloat16}:
        if bf16_rounding == "stochastic":
            return StochasticRoundingAdamW(
                trainable, lr=lr, betas=betas, weight_decay=weight_decay, seed=seed
            )
        if bf16_rounding not in ("kahan", "kahan_sr_v"):
            raise ValueError(
                f"unknown bf16_rounding {bf16_rounding!r}; valid: kahan, kahan_sr_v, stochastic"
            )
        return CompensatedAdamW(
            trainable,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            bf16_second_moment=bf16_rounding == "kahan_sr_v",
            seed=seed,
            compile_step=compile_step,
        )
    if torch.bfloat16 in dtypes:
        raise ValueError(f"trainable parameters mix dtypes {sorted(map(str, dtypes))}")
    return torch.optim.AdamW(trainable, lr=lr, betas=betas, weight_decay=weight_decay)


class _Bf16AdamW(torch.optim.Optimizer):
    """What the bf16 AdamW variants share: AdamW's hyper-parameters, validated, and the size of
    the float32 slices their arithmetic runs over (temporaries stay small next to the weights:
    2^18 elements keep a slice's ~5 float32 temporaries near the L2 caches, the fastest of the
    sizes tried; docs/log.md)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        seed: int = 0,
        chunk_size: int = 1 << 18,
    ) -> None:
        _check_hyper(lr, betas, eps, weight_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.chunk_size = chunk_size
        self.seed = seed

    def _noise_pool(self, first: Tensor) -> tuple[torch.Generator, Tensor]:
        """This step's generator and pool of uniform int32 words for stochastic rounding,
        seeded with ``(seed, k)`` so that a resumed run draws what an uninterrupted one does."""
        k = int(self.state[first]["step"]) + 1 if self.state[first] else 1
        gen = torch.Generator(device=first.device)
        gen.manual_seed(self.seed * 1_000_003 + k)
        pool = torch.empty(self.chunk_size, dtype=torch.int32, device=first.device)
        return gen, pool.random_(generator=gen)  # [chunk_size] in [0, 2^31)

    def _chunk_noise(self, gen: torch.Generator, pool: Tensor, n: int) -> Tensor:
        """``n`` uniform words for one slice: the pool XOR-ed with a key drawn for the slice."""
        key = int(torch.randint(0, 2**31 - 1, (), generator=gen))
        return pool[:n].bitwise_xor(key)  # [n]


class CompensatedAdamW(_Bf16AdamW):
    """AdamW for bfloat16 parameters with Kahan-compensated updates (see the module docstring).

    With ``k`` the step number, ``g`` the gradient and ``p + c`` the weight::

        m = b1 m + (1 - b1) g                v = b2 v + (1 - b2) g^2
        u = -lr (m / (1 - b1^k) / (sqrt(v / (1 - b2^k)) + eps) + wd (p + c))
        s = p + c + u  (in float32)          p = bf16(s)          c = bf16(s - p)

    State per parameter: ``exp_avg`` (bf16), ``exp_avg_sq`` (float32), ``compensation`` (bf16).
    With ``bf16_second_moment``, ``exp_avg_sq`` is bf16 and ``v = SR(b2 v + (1 - b2) g^2)``
    (:func:`stochastic_round_bf16`, noise drawn as :class:`StochasticRoundingAdamW` draws it);
    the step uses the exact float32 value before rounding. The arithmetic runs in float32 over
    slices of ``chunk_size`` elements, so the temporaries stay small next to the parameters.

    ``compile_step``: each slice's update is one kernel that ``torch.compile`` generates
    (:func:`compiled_chunk_update`) instead of ~20 elementwise passes over float32 temporaries,
    the same formulas, equal to the eager update up to float32 rounding (fused multiply-adds: a
    weight ``p + c`` within 2^-20 of it relative, tested). If compiling fails (no C++ compiler,
    say), the step says so once on stderr and runs eagerly from then on.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bf16_second_moment: bool = False,
        seed: int = 0,
        chunk_size: int = 1 << 18,
        compile_step: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            seed=seed,
            chunk_size=chunk_size,
        )
        self.bf16_second_moment = bf16_second_moment
        self.compile_step = compile_step

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then put back the float32 second moments: torch casts every
        floating-point state tensor to its parameter's dtype (bf16), which would round them."""
        super().load_state_dict(state_dict)
        if self.bf16_second_moment:
            return
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for param_id, param in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(param_id, {})
            if "exp_avg_sq" in saved:
                self.state[param]["exp_avg_sq"] = saved["exp_avg_sq"].to(
                    device=param.device, dtype=torch.float32, copy=True
                )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamW update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        params = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        gen, pool = self._noise_pool(params[0][1]) if self.bf16_second_moment else (None, None)
        v_dtype = torch.bfloat16 if self.bf16_second_moment else torch.float32
        for group, p in params:
            if p.dtype != torch.bfloat16:
                raise ValueError(f"CompensatedAdamW takes bfloat16 parameters, got {p.dtype}")
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=v_dtype)
                state["compensation"] = torch.zeros_like(p)
            state["step"] += 1
            hyper = _hyper(group, int(state["step"]))
            scalars = _hyper_tensor(hyper, p.device) if self.compile_step else None
            tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["compensation"])
            flat = [t.view(-1) for t in tensors]
            for chunk in zip(*(t.split(self.chunk_size) for t in flat), strict=True):
                noise = None
                if gen is not None and pool is not None:
                    noise = self._chunk_noise(gen, pool, chunk[0].numel())
                if scalars is None or not self._compiled(chunk, noise, scalars):
                    _compensated_adamw_chunk(*chunk, noise=noise, **hyper)
        return loss

    def _compiled(self, chunk: tuple[Tensor, ...], noise: Tensor | None, scalars: Tensor) -> bool:
        """The slice updated by the compiled kernel; False (and eager from now on) if the
        kernel cannot be compiled here. Compiling happens before the kernel touches anything."""
        try:
            compiled_chunk_update()(*chunk, noise, scalars)
            return True
        except Exception as exc:  # torch.compile's failures have no common type
            self.compile_step = False
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(
                f"groupwise: training.compile_optimizer: could not compile the AdamW step "
                f"({first[:200]}); it runs eagerly (set training.compile_optimizer=false to "
                "skip the attempt)",
                file=sys.stderr,
                flush=True,
            )
            return False


def _compensated_adamw_chunk(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, c: Tensor, *, noise: Tensor | None, **h: Any
) -> None:
    """The update of :class:`CompensatedAdamW` on one flat slice (in place); ``noise`` (int32
    words, bits 0-15 used) rounds a bf16 ``v`` stochastically, None for a float32 ``v``."""
    g32 = g.float()  # [n]
    m32 = m.float().mul_(h["b1"]).add_(g32, alpha=1.0 - h["b1"])  # [n]
    m.copy_(m32)
    v32 = v.float() if v.dtype != torch.float32 else v  # [n] (in place when float32)
    v32.mul_(h["b2"]).addcmul_(g32, g32, value=1.0 - h["b2"])  # [n] exact v'
    denom = v32.sqrt().div_(h["bias2_sqrt"]).add_(h["eps"])  # [n]
    if v.dtype != torch.float32:
        if noise is None:
            raise ValueError("a bf16 second moment needs rounding noise")
        v.copy_(_round_bits_(v32, noise.bitwise_and(65535)))  # [n] SR(v'), exact copy
    weight = p.float().add_(c.float())  # [n] the compensated weight p + c
    update = m32.div_(denom).mul_(-h["lr"] / h["bias1"])  # [n]
    if h["wd"] != 0:
        update.add_(weight, alpha=-h["lr"] * h["wd"])
    weight.add_(update)  # s = p + c + u
    p.copy_(weight)  # round to bf16
    c.copy_(weight.sub_(p.float()))  # what the rounding lost


HYPER_ORDER = ("lr", "b1", "b2", "eps", "wd", "bias1", "bias2_sqrt")
"""The scalars of :func:`_hyper` in the order of the compiled kernel's ``scalars`` tensor."""


def _hyper_tensor(hyper: dict[str, Any], device: torch.device) -> Tensor:
    """``hyper`` as a float64 tensor [7] (``HYPER_ORDER``): a tensor input, so a new learning
    rate or bias correction does not recompile the kernel (Python floats would be constants)."""
    values = [float(hyper[k]) for k in HYPER_ORDER]
    return torch.tensor(values, dtype=torch.float64, device=device)  # [7]


def _compensated_update_tensors(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, c: Tensor, noise: Tensor | None, s: Tensor
) -> None:
    """:func:`_compensated_adamw_chunk` with its scalars in the tensor ``s`` (``HYPER_ORDER``),
    written for ``torch.compile`` to fuse into one loop; the same formulas."""
    b1, b2, eps, bias2_sqrt = (s[i].float() for i in (1, 2, 3, 6))  # [] each
    one_b1, one_b2 = (1.0 - s[1]).float(), (1.0 - s[2]).float()  # [] as eager's Python floats
    step, decay = (-s[0] / s[5]).float(), (-s[0] * s[4]).float()  # [] -lr/bias1, -lr*wd
    g32 = g.float()  # [n]
    m32 = m.float() * b1 + one_b1 * g32  # [n]
    m.copy_(m32)
    v32 = v.float() * b2 + one_b2 * g32 * g32  # [n] exact v'
    denom = v32.sqrt() / bias2_sqrt + eps  # [n]
    if noise is not None:  # SR(v') into the bf16 second moment
        bits = (v32.view(torch.int32) + noise.bitwise_and(65535)).bitwise_and(-65536)  # [n]
        v.copy_(bits.view(torch.float32))
    else:
        v.copy_(v32)
    weight = p.float() + c.float()  # [n] p + c
    total = weight + (m32 / denom * step + decay * weight)  # [n] s = p + c + u
    rounded = total.to(torch.bfloat16)  # [n] bf16(s), not read back from the mutated p
    c.copy_(total - rounded.float())  # what the rounding lost
    p.copy_(rounded)


_COMPILED: list[Callable[..., None]] = []


def compiled_chunk_update() -> Callable[..., None]:
    """:func:`_compensated_update_tensors` through ``torch.compile`` (dynamic slice length, one
    graph per rounding of ``v``), built once per process."""
    if not _COMPILED:
        _COMPILED.append(
            torch.compile(
                _compensated_update_tensors,
                dynamic=True,
                fullgraph=True,
                options={"emulate_precision_casts": True},
            )
        )
    return _COMPILED[0]


def stochastic_round_bf16(x: Tensor, noise: Tensor) -> Tensor:
    """``x`` (float32) rounded to bfloat16 down or up at random, unbiased: ``E[result] = x``.

    bf16 keeps the top 16 bits of a float32. With ``low`` the 16 bits it drops and ``noise``
    uniform on ``[0, 2^16)``, ``bits(x) + noise`` carries into the kept bits with probability
    ``low / 2^16``, which is x's distance above the lower neighbour in ulps; clearing the low
    bits then leaves that neighbour or the next one up (in magnitude; the sign bit is untouched).
    ``noise`` is int32 with x's shape.
    """
    if x.dtype != torch.float32 or noise.dtype != torch.int32:
        raise ValueError(f"expected float32 x and int32 noise, got {x.dtype} and {noise.dtype}")
    bits = x.contiguous().view(torch.int32)  # [n]
    rounded = bits.add(noise).bitwise_and_(-65536)  # [n] low 16 bits cleared
    return rounded.view(torch.float32).to(torch.bfloat16)  # [n] exact: the low bits are zero


class StochasticRoundingAdamW(_Bf16AdamW):
    """AdamW for bfloat16 parameters with stochastically rounded weights and second moments.

    With ``k`` the step, ``g`` the gradient, ``SR`` :func:`stochastic_round_bf16`::

        m = bf16(b1 m + (1 - b1) g)          v' = b2 v + (1 - b2) g^2 (float32)   v = SR(v')
        p = SR(p - lr (m / (1 - b1^k) / (sqrt(v' / (1 - b2^k)) + eps) + wd p))

    State per parameter: ``exp_avg`` and ``exp_avg_sq`` (bf16).

    Noise: each ``step()`` draws one pool of ``chunk_size`` uniform 32-bit words, and each
    ``chunk_size`` slice of each parameter uses the pool XOR-ed with a key of its own (also
    drawn), low 16 bits for ``v``, the next 16 for the weight. Every element's noise is uniform
    and fresh at every step, so every rounding is unbiased; elements at the same offset of
    different slices share a pool word (their noises are dependent, not independent). Drawing a
    word per element instead cost most of the step's time (docs/log.md). The
    generator is seeded with ``(seed, k)`` (``k`` the step count of the first parameter with a
    gradient), so a resumed run draws the same noise as an uninterrupted one.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamW update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        params = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        gen, pool = self._noise_pool(params[0][1])
        for group, p in params:
            if p.dtype != torch.bfloat16:
                raise ValueError(
                    f"StochasticRoundingAdamW takes bfloat16 parameters, got {p.dtype}"
                )
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            hyper = _hyper(group, int(state["step"]))
            tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"])
            flat = [t.view(-1) for t in tensors]
            for chunk in zip(*(t.split(self.chunk_size) for t in flat), strict=True):
                noise = self._chunk_noise(gen, pool, chunk[0].numel())  # [n] uniform words
                _stochastic_adamw_chunk(*chunk, noise=noise, **hyper)
        return loss


def _stochastic_adamw_chunk(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, *, noise: Tensor, **h: Any
) -> None:
    """The update of :class:`StochasticRoundingAdamW` on one flat slice (in place); ``noise``
    int32 words (bits 0-15 round ``v``, bits 15-30 the weight), overwritten."""
    g32 = g.float()  # [n]
    m32 = m.float().mul_(h["b1"]).add_(g32, alpha=1.0 - h["b1"])  # [n]
    m.copy_(m32)
    v32 = v.float().mul_(h["b2"]).addcmul_(g32, g32, value=1.0 - h["b2"])  # [n] exact v'
    del g32
    denom = v32.sqrt().div_(h["bias2_sqrt"]).add_(h["eps"])  # [n]
    v.copy_(_round_bits_(v32, noise.bitwise_and(65535)))  # [n] SR(v'), exact copy
    weight = p.float()  # [n]
    update = m32.div_(denom).mul_(-h["lr"] / h["bias1"])  # [n]
    if h["wd"] != 0:
        update.add_(weight, alpha=-h["lr"] * h["wd"])
    p.copy_(_round_bits_(weight.add_(update), noise.bitwise_right_shift_(15)))


def _round_bits_(x: Tensor, noise: Tensor) -> Tensor:
    """:func:`stochastic_round_bf16` in place on a float32 temporary, without the final cast:
    ``x``'s low 16 bits are zero afterwards, so copying it into bf16 is exact."""
    bits = x.view(torch.int32)  # [n]
    bits.add_(noise).bitwise_and_(-65536)
    return x


def _check_hyper(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if lr < 0 or eps < 0 or weight_decay < 0:
        raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be in [0, 1), got {betas}")


def _hyper(group: dict[str, Any], k: int) -> dict[str, Any]:
    """The scalars of AdamW step ``k`` of a parameter group."""
    b1, b2 = group["betas"]
    return {
        "lr": group["lr"],
        "b1": b1,
        "b2": b2,
        "eps": group["eps"],
        "wd": group["weight_decay"],
        "bias1": 1.0 - b1**k,
        "bias2_sqrt": math.sqrt(1.0 - b2**k),
    }


def lr_lambda(kind: str, warmup_steps: int, total_steps: int) -> LRFactor:
    """Multiplier of the peak learning rate after ``k`` updates: linear warmup, then ``kind``.

    constant: 1; linear: decays to 0 at ``total_steps``; cosine: 0.5 (1 + cos(pi * progress)).
    """
    if kind not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown lr_scheduler_type {kind!r}; valid: constant, linear, cosine")
    return LRFactor(kind, warmup_steps, total_steps)


class LRFactor:
    """Picklable schedule function (so scheduler state can be checkpointed)."""

    def __init__(self, kind: str, warmup_steps: int, total_steps: int) -> None:
        self.kind, self.warmup, self.total = kind, warmup_steps, max(total_steps, 1)

    def __call__(self, k: int) -> float:
        if k < self.warmup:
            return (k + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min((k - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with ``lr_lambda``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, warmup_steps, total_steps))
