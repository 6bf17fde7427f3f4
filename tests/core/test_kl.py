import math

import pytest
import torch

from groupwise.core import kl_penalty


def test_hand_values() -> None:
    # column 0: logp=-1, ref=-2 -> x=-1: k1=1, k2=0.5, k3=e^-1 + 1 - 1 = 0.36787944117144233
    # column 1: logp=-2, ref=-1 -> x=+1: k1=-1, k2=0.5, k3=e - 1 - 1 = 0.7182818284590451
    # column 2: equal -> 0
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-2.0, -1.0, -0.5]])
    exp = {
        "k1": [1.0, -1.0, 0.0],
        "k2": [0.5, 0.5, 0.0],
        "k3": [0.36787944117144233, 0.7182818284590451, 0.0],
    }
    for name, values in exp.items():
        torch.testing.assert_close(
            kl_penalty(logp, ref, name), torch.tensor([values]), rtol=0, atol=1e-7
        )
    torch.testing.assert_close(kl_penalty(logp, ref), torch.tensor([exp["k3"]]), rtol=0, atol=1e-7)


def test_k3_gradient() -> None:
    # d/dlogp [exp(x) - x - 1] with x = ref - logp: -(exp(x) - 1) = 1 - exp(x); at x=-1: 0.6321205588
    logp = torch.tensor([-1.0], requires_grad=True)
    kl_penalty(logp, torch.tensor([-2.0]), "k3").sum().backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([1 - math.exp(-1)]), rtol=0, atol=1e-7)


def test_k3_clamped_no_overflow() -> None:
    # x = 100 clamped to 20: exp(20) - 20 - 1 = 485165174.4097903; x = -100 -> exp(-20) + 20 - 1
    logp = torch.tensor([-100.0, 0.0], requires_grad=True)
    ref = torch.tensor([0.0, -100.0])
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(k3).all()
    torch.testing.assert_close(
        k3, torch.tensor([485165174.4097903, math.exp(-20) + 19.0]), rtol=1e-6, atol=0
    )
    k3.sum().backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    # k1 / k2 are not clamped
    assert kl_penalty(logp, ref, "k2")[0].item() == 5000.0


def test_errors() -> None:
    with pytest.raises(
        ValueError, match="algorithm.kl_estimator: unknown name 'k4'; valid: k1, k2, k3"
    ):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="shapes differ"):
        kl_penalty(torch.zeros(2), torch.zeros(3))
