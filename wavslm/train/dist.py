"""Process-group plumbing: the same code runs alone or under `torchrun --nproc_per_node=N`."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def mean(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks."""
    if not d.active or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {k: v / d.world for k, v in zip(keys, t.tolist(), strict=True)}


def global_count(count: torch.Tensor) -> torch.Tensor:
    """The denominator that makes a rank's mean over its frames, once DDP has averaged the gradients (or a
    log the losses) over the ranks, the mean over every rank's frames: `count` summed over the ranks of the
    running process group, divided by the world size (at least 1 / world size; a term with no frame
    anywhere has a zero sum). Without a group, `count` itself (at least 1). One small all-reduce; every
    rank must call it the same number of times."""
    count = count.detach().float()
    if dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        count = count.clone()
        dist.all_reduce(count)
        return (count / world).clamp_min(1 / world)
    return count.clamp_min(1)


def all_true(d: Dist, flag: bool) -> bool:
    """True when `flag` holds on every rank (so that all ranks go on, or all stop, together)."""
    ok = torch.tensor([int(flag)], dtype=torch.int32, device=d.device)
    if d.active:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def all_finite(d: Dist, loss: torch.Tensor) -> bool:
    """True when `loss` (any shape: e.g. a step's losses stacked) is finite on every rank, so that all ranks
    stop together; one all-reduce and one host sync."""
    ok = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
    if d.active:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())
