"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``).

Choices:
- One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
  :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on CPU). Every helper is
  a no-op (or the identity) in a single process, so the trainer calls them unconditionally.
- ``ddp`` keeps a full replica per rank and all-reduces gradients
  (``DistributedDataParallel``); ``fsdp`` shards parameters, gradients and optimizer state
  (FSDP2 ``fully_shard`` per decoder layer, then the root).
- Both average gradients over ranks. The loss of each rank is already divided by the *global*
  normalisers, so the trainer multiplies it by the world size: the sum over ranks, not the mean,
  is the gradient of the global loss (the same update as one process with the whole batch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

Strategy = Literal["ddp", "fsdp"]
T = TypeVar("T")


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str = "auto", timeout_s: float = 1800.0) -> torch.device:
    """Join the process group when launched with ``WORLD_SIZE > 1``; returns this rank's device.

    ``device_name`` is ``training.device``. In a single process it is used as is ('auto': cuda
    when available). Under torchrun, 'cpu' forces the CPU (gloo); anything else picks
    ``cuda:LOCAL_RANK`` when CUDA is available (NCCL), else the CPU (gloo).
    """
    if env_world_size() == 1:
        if device_name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device_name)
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    device = torch.device("cpu")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return device


def destroy_distributed() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Whether this is rank 0, the one that writes logs, reports and checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over ranks (in place; returned for convenience)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_floats(values: dict[str, float], ops: dict[str, str]) -> dict[str, float]:
    """Reduce scalar metrics over ranks: op ``sum``, ``min``, ``max`` or (default) ``mean``.

    Every rank must pass the same keys.
    """
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    out: dict[str, float] = {}
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(ops.get(key, "mean"), []).append(key)
    reduce_ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM}
    reduce_ops |= {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    for op_name, names in groups.items():
        t = torch.tensor([values[k] for k in names], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t, op=reduce_ops[op_name])
        if op_name == "mean":
            t /= world_size()
        out.update(zip(names, t.tolist(), strict=True))
    return out


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (same shape on every rank) over ranks along dim 0, rank order."""
    if not is_distributed():
        return tensor
    device, dtype = tensor.device, tensor.dtype
    local = tensor.to(_comm_device(), torch.uint8 if dtype == torch.bool else dtype).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(device, dtype)


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]
    return result


def _comm_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_slice(total: int) -> slice:
    """This rank's contiguous share of ``total`` items (``total`` divisible by world size)."""
    n = world_size()
    if total % n:
        raise ValueError(f"{total} items cannot be split evenly over {n} ranks")
    share = total // n
    return slice(rank() * share, (rank() + 1) * share)


# ---------------------------------------------------------------------------- model wrapping
def decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    """The transformer blocks of a transformers model (``model.model.layers`` for Llama)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ValueError("fsdp: found no *DecoderLayer modules to shard in the model")
    return layers


def wrap_policy(module: nn.Module, strategy: Strategy, device: torch.device) -> nn.Module:
    """Wrap ``module`` for data-parallel training; unchanged in a single process.

    ``ddp``: ``DistributedDataParallel`` (parameters broadcast from rank 0). ``fsdp``: FSDP2
    ``fully_shard`` on every decoder layer, then on ``module`` itself; parameters become sharded
    ``DTensor``s *in place*, so build the optimizer after this call. Initial weights must be
    equal on every rank for ``fsdp`` (they are: every rank builds the model from the same seed).
    """
    if not is_distributed():
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # buffers (rotary frequencies) are equal on every rank: no per-forward broadcast
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    for layer in decoder_layers(module):
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor of a (possibly sharded) parameter; a collective for a ``DTensor``."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    return tensor


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP-sharded ``DTensor``s."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """Full (unsharded, on the CPU) state dict of an FSDP model; a collective, filled on rank 0.

    Tied parameters (``lm_head.weight`` = ``embed_tokens.weight``) appear once, under their
    first name, as in ``save_pretrained``'s own output.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            state.pop(name, None)
        seen.add(id(param))
    return state


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full (unsharded, on the CPU) model and optimizer state dicts of an FSDP model.

    A collective: every rank must call it; the result is filled on rank 0 only.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    return full_model_state(model), optim_state


def load_full_model_state(model: nn.Module, state: dict[str, Any]) -> list[str]:
    """Load a full state dict into an FSDP model (every rank passes it); returns missing keys."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, strict=False)
    result = set_model_state_dict(model, state, options=options)
    return list(result.missing_keys)


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state dict (as saved by :func:`full_state_dicts`) under FSDP."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)
