"""FSDP2 for the transformer stages (`train.parallel: fsdp`): each transformer layer sharded over the ranks
with `fully_shard`, checkpoints written and read by `torch.distributed.checkpoint` (every rank its own
shard; read back at any world size, one process included), and the full weights gathered for the export.

A sharded checkpoint is a folder, `checkpoints/last/` or `best/`: DCP's files plus `trainer.pt` (step,
best loss, schedule, every rank's RNG), written last; the folder is built beside its place and renamed
over the old one, so a reader finds the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import remove_temporaries
from ..modules.transformer import TransformerLayer
from .dist import Dist, barrier

TRAINER = "trainer.pt"


def shard(net: nn.Module, precision: str) -> None:
    """Shard `net` in place: each `TransformerLayer` its own FSDP unit, the rest in the root's; with bf16
    the layers compute in bfloat16 and gradients are reduced in float32 (weights and optimizer stay fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision == "bf16" else MixedPrecisionPolicy())
    for layer in [m for m in net.modules() if isinstance(m, TransformerLayer)]:
        fully_shard(layer, mp_policy=policy)
    fully_shard(net, mp_policy=policy)


def _state(nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> tuple[nn.Module, dict]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    container = nn.ModuleDict(nets)  # one namespace: optimizers hold parameters of several nets by name
    return container, {"nets": get_model_state_dict(container),
                       "optimizers": {k: get_optimizer_state_dict(container, o) for k, o in optimizers.items()}}


def is_checkpoint(folder: Path) -> bool:
    return (folder / TRAINER).is_file()


def save(folder: Path, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
         trainer: dict[str, Any], dist: Dist) -> None:
    """Write a sharded checkpoint to `folder` (collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    _, state = _state(nets, optimizers)
    dcp.save(state, checkpoint_id=tmp)
    barrier(dist)
    if dist.main:
        torch.save(trainer, tmp / TRAINER)
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    barrier(dist)


def load(folder: Path, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Read a sharded checkpoint into `nets` and `optimizers` (sharded or not, at any world size; every
    rank calls it); return its `trainer.pt`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    trainer = torch.load(Path(folder) / TRAINER, map_location="cpu", weights_only=True)
    container, state = _state(nets, optimizers)
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(container, state["nets"])
    for k, o in optimizers.items():
        set_optimizer_state_dict(container, o, state["optimizers"][k])
    return trainer


def full_weights(nets: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """Every net's whole state dict, gathered to the CPU of every rank (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: get_model_state_dict(m, options=options) for k, m in nets.items()}


def clean(ckpt_dir: Path) -> None:
    """Clear what a killed save left: a `.last.tmp` folder is removed; a `.last.old` one is put back as
    `last` when the save died between its two renames, else removed (and temporary files)."""
    if ckpt_dir.is_dir():
        for leftover in ckpt_dir.glob(".*.tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        for old in ckpt_dir.glob(".*.old"):
            place = ckpt_dir / old.name[1 : -len(".old")]
            if old.is_dir() and not place.exists():
                old.rename(place)
            elif old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        remove_temporaries(ckpt_dir)
