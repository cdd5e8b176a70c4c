"""Data-parallel training under ``torchrun``: one process per rank, gradients averaged by DDP.

``torchrun --nproc_per_node=N train.py --config ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (gloo on CPU, nccl on CUDA). Without
``WORLD_SIZE`` nothing is initialised and every helper here is the identity, so a plain
``python train.py`` runs exactly as it did before this module existed.

Every rank loads the whole data set, so normalisation statistics and the validation windows are
the same everywhere; each rank trains on its own shard of every epoch's shuffled order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CUDA, or no such GPU)."""


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.startswith("cuda") else "gloo"


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """The torch device this process trains on; a one-line :class:`DeviceError` if unusable.

    Under torchrun (``local_rank`` given) a bare ``cuda`` means ``cuda:LOCAL_RANK``.

    >>> resolve_device("cpu")
    'cpu'
    """
    kind, _, index = device.partition(":")
    if kind != "cuda":
        torch.device(device)  # "cpu", "mps"...; a malformed name raises here
        return device
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {device} asked for, but torch {torch.__version__} sees no CUDA GPU "
            f"(train on --device cpu)"
        )
    count = torch.cuda.device_count()
    if local_rank is not None:
        if index:
            raise DeviceError(f"under torchrun use --device cuda, not {device}: LOCAL_RANK picks the GPU")
        index = str(local_rank)
    chosen = int(index or 0)
    if chosen >= count:
        raise DeviceError(f"--device asks for GPU {chosen}, but there are only {count} (0..{count - 1})")
    return f"cuda:{chosen}"


def setup(device: str = "cpu") -> Context:
    """Join torchrun's process group if there is one; otherwise a single-process context."""
    if "WORLD_SIZE" not in os.environ:
        return Context(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device, local_rank)
    context = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device)
    if context.backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(context.backend)
    return context


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        # Every rank leaves together: a rank that tore its gloo group down while rank 0 was still
        # scoring test and saving was, now and then, aborted ("terminate called without an active
        # exception", SIGABRT) and took the whole torchrun down with it.
        dist.barrier()
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world_size) of this process: (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of an epoch's order, as ``DistributedSampler`` cuts it.

    The order is padded by repeating its start until it divides evenly, so every rank takes
    the same number of steps; rank r takes positions r, r + world_size, ...

    >>> shard(torch.arange(5), 0, 2).tolist(), shard(torch.arange(5), 1, 2).tolist()
    ([0, 2, 4], [1, 3, 0])
    >>> shard(torch.arange(5), 0, 1).tolist()
    [0, 1, 2, 3, 4]
    """
    if world_size == 1:
        return order
    padding = -len(order) % world_size
    if padding:
        order = torch.cat([order, order.repeat(padding // len(order) + 1)[:padding]])
    return order[rank::world_size]


def wrap(model: nn.Module, device: str) -> nn.Module:
    """The model in DistributedDataParallel when a process group is up, else the model itself.

    DDP broadcasts rank 0's parameters and buffers once here, so every replica starts equal. The
    buffers (normalisation statistics) never change afterwards, so they are not re-sent before
    every forward.
    """
    if world()[1] == 1:
        return model
    device_ids = [torch.device(device).index] if device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":  # nccl moves CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_floats(values: list[float], src: int = 0) -> list[float]:
    """Rank ``src``'s values on every rank (unchanged in a single process)."""
    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src)
    return tensor.tolist()


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (unchanged in a single process)."""
    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def state_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, byte for byte, in state_dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def replica_digests(model: nn.Module) -> list[str]:
    """Every rank's :func:`state_digest`, in rank order: all equal when the replicas agree."""
    mine = state_digest(model)
    if world()[1] == 1:
        return [mine]
    gathered: list[str | None] = [None] * world()[1]
    dist.all_gather_object(gathered, mine)
    return [str(d) for d in gathered]


def run_record(context: Context, batch_size: int, digests: list[str]) -> dict[str, object]:
    """What a checkpoint records of a data-parallel run: ranks, backend, batch and replica digests."""
    return {
        "world_size": context.world_size,
        "backend": context.backend,
        "batch_per_rank": batch_size // context.world_size,
        "parameter_sha256": digests,
    }
