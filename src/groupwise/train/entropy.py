"""The entropy bonus of the step's loss and its adaptive coefficient (TRL's names).

With ``algorithm.entropy_coef = c != 0`` or ``algorithm.use_adaptive_entropy``, every
optimizer update k of a step minimises::

    L_k = L_policy - c_k * H_k,        H_k = sum_it(H_it M_it) / N

where ``H_it`` is the policy's own entropy at token t of completion i (differentiable,
``groupwise.core.chunked_token_logp(..., entropy_grad=True)``), ``M`` the tokens the policy loss
acts on (the loss mask, times the entropy mask when ``top_entropy_quantile < 1``) and ``N`` their
count over the whole step (every micro-batch and rank), so the micro-batch terms
(:func:`groupwise.core.entropy_bonus`) add up to the step's token mean.

``c_k`` is ``entropy_coef``, or with ``use_adaptive_entropy`` the adaptive entropy control of
Skywork-OR1 (arXiv 2505.22312), :class:`EntropyController`::

    c_k  = c      if H_{k-1} <= target else 0          (H_0 = +inf: no bonus on the first update)
    c   <- min(c + delta, c_max)   if H_k <= target
    c   <- max(c - delta, c_min)   otherwise

With both off (the default) nothing here runs: no entropy is computed and the loss is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from groupwise.config import AlgorithmConfig
from groupwise.core import entropy_bonus
from groupwise.distributed import all_reduce_sum


@dataclass
class EntropyController:
    """The entropy coefficient of the next update (fixed, or adaptive as in Skywork-OR1).

    State (checkpointed): ``coef`` and ``last_entropy``, the token-mean entropy of the last
    update (``inf`` before the first).
    """

    coef: float
    adaptive: bool = False
    coef_min: float = 0.0
    coef_max: float = 1.0
    delta: float = 0.005
    target: float = 0.2
    last_entropy: float = math.inf

    @classmethod
    def from_config(cls, a: AlgorithmConfig) -> EntropyController | None:
        """The controller of ``algorithm.entropy_*``, or None when the bonus is off."""
        if a.entropy_coef == 0.0 and not a.use_adaptive_entropy:
            return None
        return cls(
            coef=a.entropy_coef,
            adaptive=a.use_adaptive_entropy,
            coef_min=a.entropy_coef_min,
            coef_max=a.entropy_coef_max,
            delta=a.entropy_coef_delta,
            target=a.entropy_target,
        )

    def applied_coef(self) -> float:
        """The coefficient this update uses: ``coef``; adaptive: ``coef`` if the previous
        update's entropy was ``<= target``, else 0."""
        if self.adaptive and not self.last_entropy <= self.target:
            return 0.0
        return self.coef

    def observe(self, entropy: float) -> None:
        """After an update whose token-mean entropy was ``entropy``: adaptive, move ``coef`` by
        ``delta`` towards more bonus (``entropy <= target``) or less, within ``[coef_min,
        coef_max]``; a fixed coefficient stays. Remembers ``entropy`` either way."""
        if self.adaptive:
            if entropy <= self.target:
                self.coef = min(self.coef + self.delta, self.coef_max)
            else:
                self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = float(entropy)

    def state_dict(self) -> dict[str, float]:
        """``coef`` and ``last_entropy`` (what a resumed run needs to continue exactly)."""
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.coef = float(state["coef"])
        self.last_entropy = float(state["last_entropy"])


class EntropyBonus:
    """The bonus terms of one step's updates and the entropy they measure for the controller.

    ``control`` None: the bonus is off and every method is a no-op (nothing is computed, the
    loss is returned as is). Per step :meth:`start_step` (the global token count ``N``); per
    micro-batch :meth:`add_to` (its term added to the loss); per update :meth:`end_update`
    after the optimizer step (the global ``H_k`` to the controller, the next ``c_k``).
    """

    def __init__(self, control: EntropyController | None) -> None:
        self.control = control
        self.num_tokens = 1.0
        self.coef = 0.0 if control is None else control.applied_coef()
        self._sum = torch.zeros((), dtype=torch.float64)

    @classmethod
    def from_config(cls, a: AlgorithmConfig) -> EntropyBonus:
        """The step's entropy bonus (off unless ``algorithm.entropy_*`` turn it on)."""
        return cls(EntropyController.from_config(a))

    @property
    def enabled(self) -> bool:
        """Whether the loss has an entropy term (``entropy_coef != 0`` or adaptive)."""
        return self.control is not None

    def start_step(self, loss_mask: Tensor, entropy_mask: Tensor | None) -> None:
        """``N``: the tokens the bonus acts on, over this step's batch on every rank; the
        first update's coefficient."""
        if self.control is None:
            return
        count = torch.tensor(
            [float(bonus_mask(loss_mask, entropy_mask).sum())], dtype=torch.float64
        )
        self.num_tokens = max(float(all_reduce_sum(count)[0]), 1.0)
        self._start_update(self.control)

    def _start_update(self, control: EntropyController) -> None:
        self.coef = control.applied_coef()
        self._sum = torch.zeros((), dtype=torch.float64)

    def add_to(
        self, loss: Tensor, entropy: Tensor | None, loss_mask: Tensor, entropy_mask: Tensor | None
    ) -> Tensor:
        """``loss - c_k * sum_it(H_it M_it) / N`` for one micro-batch (``[b, lc]`` inputs);
        ``loss`` itself when the bonus is off."""
        if self.control is None:
            return loss
        if entropy is None:
            raise ValueError("the entropy bonus needs the policy's entropies (entropy=True)")
        mask = bonus_mask(loss_mask, entropy_mask)  # [b, lc]
        self._sum += (entropy.detach().to(torch.float64) * mask).sum().cpu()
        return loss + entropy_bonus(entropy, mask, self.coef, self.num_tokens)

    def end_update(self) -> dict[str, float]:
        """After an optimizer update: its global token-mean entropy ``H_k`` to the controller,
        the next update's coefficient; returns ``{"entropy_coef": c}`` (TRL's metric: the
        controller's coefficient after the update), ``{}`` when the bonus is off."""
        if self.control is None:
            return {}
        entropy = float(all_reduce_sum(self._sum.reshape(1))[0]) / self.num_tokens
        self.control.observe(entropy)
        self._start_update(self.control)
        return {"entropy_coef": self.control.coef}

    def state_dict(self) -> dict[str, float] | None:
        """The controller's state (see :meth:`EntropyController.state_dict`); None when off."""
        return None if self.control is None else self.control.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.control is not None:
            self.control.load_state_dict(state)


def bonus_mask(loss_mask: Tensor, entropy_mask: Tensor | None) -> Tensor:
    """The tokens the bonus acts on, float32 ``[b, lc]``: those the policy loss acts on."""
    mask = loss_mask.to(torch.float32)
    return mask if entropy_mask is None else mask * entropy_mask.to(torch.float32)
