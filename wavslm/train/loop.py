"""The one training loop: every stage (ssl, codec, lm) plugs in as a `Stage`.

A step consumes one global batch: its items are split across ranks and then into `grad_accum`
micro-batches; gradients are averaged (DistributedDataParallel under torchrun), clipped, and every
optimizer steps. The global batch of step s is a deterministic function of (seed, s), and per-item
randomness (crops) is seeded by (seed, epoch, item), so one process and N processes see the same data,
and a resumed run continues exactly where the killed one was. Micro-batches come through a
`torch.utils.data.DataLoader` whose batch sampler (`StepSampler`) yields this rank's share of each
step's global batch: with `train.num_workers` > 0, items are read, cropped and collated in worker
processes ahead of the step, and the batches are the same ones, in the same order.
"""

import copy
import logging
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from ..errors import InputError
from ..io import write_atomic
from . import checkpoint, sharded
from .dist import Dist, all_finite, barrier, mean
from .schedule import LRSchedule

log = logging.getLogger("wavslm.train")


@dataclass
class TrainConfig:
    """The `train:` section of every stage."""

    steps: int = 1000
    batch_size: int = 8  # global: split across ranks and accumulation
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    clip: float = 5.0
    schedule: str = "cosine"  # constant | cosine | plateau
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    plateau_factor: float = 0.9
    plateau_threshold: float = 0.0025
    valid_every: int = 200
    valid_batches: int = 8
    save_every: int = 100
    log_every: int = 10
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes reading and collating micro-batches (0: in the loop)
    prefetch_factor: int = 2  # micro-batches each worker keeps ready
    export: str = "last"  # last | best (the weights of the best validation loss, when there was validation)
    compile: bool = False  # torch.compile the stage's networks in place (their weights' names do not change)
    parallel: str = "ddp"  # under torchrun: ddp, or fsdp (FSDP2 per transformer layer; the ssl and lm stages)
    peak_tflops: float = 0.0  # one device's peak for the log's `mfu` (0: a known GPU's bf16 dense peak; none on CPU)

    def __post_init__(self) -> None:
        """Values no run can use are one sentence here, not a traceback (or a silent no-op) later."""
        for name in ("steps", "batch_size", "grad_accum", "valid_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"train: '{name}' must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "valid_batches", "num_workers"):
            if getattr(self, name) < 0:
                raise InputError(f"train: '{name}' must not be negative, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"train: 'lr' must be a positive number, got {self.lr}")
        for name in ("weight_decay", "clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InputError(f"train: '{name}' must be a finite number of at least 0, got {getattr(self, name)}")
        if self.parallel not in ("ddp", "fsdp"):
            raise InputError(f"train: 'parallel' must be ddp or fsdp, got {self.parallel!r}")
        if self.prefetch_factor < 1:
            raise InputError(f"train: 'prefetch_factor' must be at least 1, got {self.prefetch_factor}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise InputError(f"train: 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")


class Stage(Protocol):
    """What a training stage provides to the loop.

    `nets`: the trainable networks by name (the loop wraps them in DDP); `raw`: the same, unwrapped.
    `throughput`: `(name, scale)`: the log gets `name`, the sum of the batches' `length` times `scale` per
    second of training over every rank (tokens/s for the LM, audio seconds/s for the others).
    `train_step` yields `(optimizer name, loss, metrics)` one or more times per micro-batch; each loss
    is backpropagated as it is yielded, so a stage can alternate (e.g. discriminator then generator).
    Metrics are detached 0-dim tensors, left on the device: the loop sums them and reduces them once per
    log interval, so a step never waits on the host for them.
    """

    nets: dict[str, nn.Module]
    raw: dict[str, nn.Module]
    throughput: tuple[str, float]

    def param_groups(self) -> dict[str, list[nn.Parameter]]: ...
    def datasets(self) -> tuple[Any, Any | None]: ...
    def collate(self, items: list[Any]) -> dict[str, Tensor]: ...
    def train_step(self, batch: dict[str, Tensor]) -> Iterator[tuple[str, Tensor, dict[str, Tensor]]]: ...
    def valid_step(self, batch: dict[str, Tensor]) -> dict[str, float | Tensor]: ...
    def export(self, folder: Path) -> None: ...


# Dense bf16 peaks (TFLOP/s) of the GPUs people train on, by a part of `torch.cuda.get_device_name()`.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    """One device's peak FLOP/s for model FLOPs utilisation: `train.peak_tflops`, else a known GPU's bf16
    dense peak when training in bf16; None when unknown (no `mfu` in the log)."""
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops * 1e12
    if device.type != "cuda" or cfg.precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for part, tf in PEAK_BF16_TFLOPS.items() if part in name), None)


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss); the last good checkpoint is kept."""


def batches_per_epoch(size: int, n_items: int) -> int:
    """Whole global batches of `size` in `n_items` items (the last partial one is dropped)."""
    if n_items < size:
        raise InputError(f"the dataset has {n_items} items, fewer than one batch of {size}")
    return n_items // size


def global_batch(step: int, size: int, n_items: int, seed: int) -> tuple[int, list[int]]:
    """Epoch and item indices of the global batch of `step`: a fresh permutation per epoch, last partial batch dropped."""
    epoch, b = divmod(step, batches_per_epoch(size, n_items))
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return epoch, perm[b * size : (b + 1) * size].tolist()


def micro_batches(indices: list[int], rank: int, world: int, grad_accum: int) -> list[list[int]]:
    """This rank's share of a global batch (every `world`-th item from `rank`), split into `grad_accum` parts."""
    mine = indices[rank::world]
    per = len(mine) // grad_accum
    return [mine[i * per : (i + 1) * per] for i in range(grad_accum)]


class StepSampler(torch.utils.data.Sampler):
    """The batch sampler of a run: this rank's micro-batches of steps `start` to `cfg.steps - 1`, in order,
    each a list of `(epoch, item)` keys (a worker's copy of the dataset learns the epoch from the key)."""

    def __init__(self, n_items: int, cfg: TrainConfig, rank: int, world: int, start: int):
        self.n_items, self.cfg, self.rank, self.world, self.start = n_items, cfg, rank, world, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        c = self.cfg
        for step in range(self.start, c.steps):
            epoch, indices = global_batch(step, c.batch_size, self.n_items, c.seed)
            for part in micro_batches(indices, self.rank, self.world, c.grad_accum):
                yield [(epoch, i) for i in part]

    def __len__(self) -> int:
        return (self.cfg.steps - self.start) * self.cfg.grad_accum


class EpochItems(torch.utils.data.Dataset):
    """`dataset[(epoch, i)]`: item `i` as epoch `epoch` makes it (`set_epoch` first, when the dataset has
    per-epoch randomness), so that worker processes need no word from the loop."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class Trainer:
    """Runs a stage for `cfg.steps` steps in `run_dir`; with `resume`, from the newest intact checkpoint of
    `run_dir/checkpoints` (`last.pt`, else `best.pt`, saying so). `on_start` runs (on the main rank) once the
    run is under way: a resumed run's settings have then been accepted by its checkpoint."""

    def __init__(self, stage: Stage, cfg: TrainConfig, run_dir: Path, dist: Dist, name: str = "train",
                 resume: bool = False, on_start=None):
        if cfg.batch_size % (dist.world * cfg.grad_accum):
            raise InputError(
                f"batch_size {cfg.batch_size} must be divisible by world size x grad_accum ({dist.world} x {cfg.grad_accum})"
            )
        if cfg.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
        if cfg.export not in ("last", "best"):
            raise InputError(f"train.export must be last or best, got {cfg.export!r}")
        self.stage, self.cfg, self.run_dir, self.dist, self.name = stage, cfg, Path(run_dir), dist, name
        self.resuming, self.on_start = resume, on_start
        self.ckpt_dir = self.run_dir / "checkpoints"
        stage.raw = dict(stage.nets)
        self.sharded = dist.active and cfg.parallel == "fsdp"
        if cfg.parallel == "fsdp" and not getattr(stage, "shardable", False):
            raise InputError(f"train.parallel: fsdp shards the transformer stages (ssl, lm); the {name} stage trains "
                             "with ddp")
        self._templates: dict[str, nn.Module] = {}
        if self.sharded:
            if dist.main:  # plain copies for the export, which writes whole weights in the released layout
                self._templates = {k: copy.deepcopy(m).cpu() for k, m in stage.raw.items()}
            for net in stage.raw.values():
                sharded.shard(net, cfg.precision)
        if cfg.compile:
            for net in stage.raw.values():
                net.compile()  # in place: the same module, state dict and checkpoints, a compiled forward
        if dist.active and not self.sharded:
            stage.nets = {k: DistributedDataParallel(m) for k, m in stage.nets.items()}
        self.optimizers = {
            group: torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
            for group, params in stage.param_groups().items()
        }
        self.schedule = LRSchedule(cfg.schedule, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.plateau_factor, cfg.plateau_threshold)
        self.train_set, self.valid_set = stage.datasets()
        self.step = 0
        self.best = math.inf
        self.writer = None
        self._batches: Iterator[dict[str, Tensor]] | None = None  # made at the first step (after any resume)
        self._amount = 0  # this rank's batch lengths since the last train log
        self._sums: dict[str, Tensor] = {}  # this rank's metrics since the last train log, on the device
        self._steps = 0  # steps since the last train log
        # Model FLOPs utilisation: one step's FLOPs on this rank, counted once (eager only), over the peak.
        self._peak = peak_flops(cfg, dist.device)
        self._step_flops: float | None = None
        self._resumed_at: int | None = None  # the first step a resumed run makes again
        self._start = time.perf_counter()

    # ---- checkpoints ------------------------------------------------------------------------------

    def _payload(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best": self.best,
            "nets": {k: m.state_dict() for k, m in self.stage.raw.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedule": self.schedule.state_dict(),
            "rng": checkpoint.rng_state(),  # per rank, gathered below
        }

    def save(self, filename: str = "last.pt") -> None:
        if self.sharded:
            self._save_sharded(self.ckpt_dir / filename.removesuffix(".pt"))
            return
        payload = self._payload()
        if self.dist.active:
            states = [None] * self.dist.world
            torch.distributed.all_gather_object(states, payload["rng"])
            payload["rng"] = states
        else:
            payload["rng"] = [payload["rng"]]
        if self.dist.main:
            checkpoint.save(self.ckpt_dir / filename, payload)
        barrier(self.dist)

    def _rng_states(self) -> list[Any]:
        """Every rank's RNG state, in rank order (collective)."""
        state = checkpoint.rng_state()
        if not self.dist.active:
            return [state]
        states = [None] * self.dist.world
        torch.distributed.all_gather_object(states, state)
        return states

    def _save_sharded(self, folder: Path) -> None:
        trainer = {"step": self.step, "best": self.best, "schedule": self.schedule.state_dict(),
                   "rng": self._rng_states()}
        sharded.save(folder, self.stage.raw, self.optimizers, trainer, self.dist)

    def _checkpoints(self) -> list[Path]:
        """The checkpoints of the run folder, newest first: files (`last.pt`, `best.pt`) and sharded folders."""
        found = [p for p in (self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt") if p.is_file()]
        found += [p for p in (self.ckpt_dir / "last", self.ckpt_dir / "best") if sharded.is_checkpoint(p)]
        stamp = lambda p: (p / sharded.TRAINER if p.is_dir() else p).stat().st_mtime  # noqa: E731
        return sorted(found, key=stamp, reverse=True)

    def resume(self) -> bool:
        """Load the newest intact checkpoint if resuming (an `InputError` if there is none); False if not."""
        if self.dist.main and self.ckpt_dir.is_dir():
            sharded.clean(self.ckpt_dir)
        barrier(self.dist)
        if not self.resuming:
            return False
        found = self._checkpoints()
        if not found:
            raise InputError(f"cannot resume: '{self.ckpt_dir}' holds no checkpoint (last.pt or best.pt)")
        damaged = []
        for path in found:
            if path.is_dir():  # sharded: read by every rank, at whatever world size this run has
                self._load_sharded(path)
                return True
            if self.sharded:
                raise InputError(f"cannot resume '{path}' with train.parallel: fsdp: it was written by a ddp run; "
                                 "resume it with ddp (the sharded folders of an fsdp run resume either way)")
            try:
                payload = checkpoint.load(path)
                if not isinstance(payload, dict) or "nets" not in payload:
                    raise ValueError("not a training checkpoint")
            except Exception as error:  # truncated, empty or foreign files all end here
                damaged.append(f"{path.name}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
                continue
            self._load(payload, path)
            if damaged and self.dist.main:
                log.warning("%s: resumed from %s at step %d: %s is damaged", self.name, path.name, self.step,
                            damaged[0].split(":")[0])
            return True
        raise InputError(f"cannot resume: every checkpoint in '{self.ckpt_dir}' is damaged ({'; '.join(damaged)})")

    def _load_sharded(self, folder: Path) -> None:
        try:
            trainer = sharded.load(folder, self.stage.raw, self.optimizers)
        except (KeyError, RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"cannot resume from '{folder}': it does not fit the run's settings ({first})") from error
        self.schedule.load_state_dict(trainer["schedule"])
        self.step, self.best = trainer["step"], trainer["best"]
        rng = trainer["rng"]
        checkpoint.set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world else rng[0])

    def _load(self, payload: dict[str, Any], path: Path) -> None:
        try:
            for k, m in self.stage.raw.items():
                m.load_state_dict(payload["nets"][k])
            for k, o in self.optimizers.items():
                o.load_state_dict(payload["optimizers"][k])
        except (KeyError, RuntimeError, ValueError) as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = next((line for line in lines if line.startswith(("size mismatch", "Missing", "Unexpected"))),
                          lines[0] if lines else type(error).__name__)
            raise InputError(f"cannot resume from '{path}': it does not fit the run's settings ({reason})") from error
        self.schedule.load_state_dict(payload["schedule"])
        self.step, self.best = payload["step"], payload["best"]
        rng = payload["rng"]
        checkpoint.set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world else rng[0])

    def _truncate_log(self) -> None:
        """Keep `log.jsonl`'s rows up to the resumed step: those after it are made again (a killed run may
        have logged steps that its last checkpoint does not hold, and a half-written last line)."""
        path = self.run_dir / "log.jsonl"
        if not path.is_file():
            return
        import json

        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("step", 0) <= self.step:
                kept.append(line + "\n")
        write_atomic(path, "".join(kept))

    # ---- one step ---------------------------------------------------------------------------------

    def _loader(self) -> Iterator[dict[str, Tensor]]:
        """This rank's collated micro-batches from the current step to the end, in order."""
        c, workers = self.cfg, self.cfg.num_workers
        sampler = StepSampler(len(self.train_set), c, self.dist.rank, self.dist.world, self.step)
        extra = {"prefetch_factor": c.prefetch_factor} if workers else {}
        return iter(torch.utils.data.DataLoader(
            EpochItems(self.train_set), batch_sampler=sampler, collate_fn=self.stage.collate, num_workers=workers,
            pin_memory=workers > 0 and self.dist.device.type == "cuda", **extra))

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.dist.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> None:
        """One optimizer step. Its metrics stay tensors on the device, added to the interval's sums
        (`log_metrics` reduces them over ranks once per log); the only host sync is the finiteness check."""
        if self._batches is None:
            self._batches = self._loader()
        if hasattr(self.train_set, "set_epoch"):
            # For a stage that reads the epoch in its step (the ssl masks); the workers' copies get it by key.
            self.train_set.set_epoch(self.step // batches_per_epoch(self.cfg.batch_size, len(self.train_set)))
        for net in self.stage.raw.values():
            net.train()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        totals: dict[str, Tensor] = {}
        losses: list[tuple[str, Tensor]] = []  # checked once, before the optimizers step: one sync per step
        micro = range(self.cfg.grad_accum)
        counting = self._peak is not None and self._step_flops is None and not self.cfg.compile
        counter = FlopCounterMode(display=False) if counting else nullcontext()
        with counter:
            self._micro_steps(micro, totals, losses)
        if counting:
            self._step_flops = float(counter.get_total_flops())
        self._finish_step(totals, losses)

    def _micro_steps(self, micro: range, totals: dict[str, Tensor], losses: list[tuple[str, Tensor]]) -> None:
        """Forward and backward of the step's micro-batches, gradients reduced over the ranks on the last."""
        for i in micro:
            batch = next(self._batches)
            self._amount += int(batch["length"].sum())  # on the CPU, before the batch moves: no sync
            batch = self._to_device(batch)
            with ExitStack() as stack:
                last = i == len(micro) - 1  # gradients are reduced over the ranks on the last micro-batch only
                if self.sharded:
                    for net in self.stage.nets.values():
                        net.set_requires_gradient_sync(last)
                elif self.dist.active and not last:
                    for net in self.stage.nets.values():
                        stack.enter_context(net.no_sync())
                steps = self.stage.train_step(batch)
                while True:
                    with self._autocast():  # forward under autocast, backward outside it
                        item = next(steps, None)
                    if item is None:
                        break
                    group, loss, metrics = item
                    losses.append((group, loss.detach()))
                    (loss / len(micro)).backward()
                    for k, v in metrics.items():
                        totals[k] = totals.get(k, 0.0) + torch.as_tensor(v, device=self.dist.device).detach().float() / len(micro)
    def _finish_step(self, totals: dict[str, Tensor], losses: list[tuple[str, Tensor]]) -> None:
        """Check the losses, clip, step the optimizers and add the step's metrics to the interval's sums."""
        if not all_finite(self.dist, torch.stack([loss.float() for _, loss in losses])):
            bad = next((f"the {g} loss became {v.item()}" for g, v in losses if not torch.isfinite(v).all()),
                       "a loss became NaN or infinite on another rank")
            raise TrainingError(f"{self.name}: {bad} at step {self.step}; stopping (the last good checkpoint is "
                                f"{self.ckpt_dir / 'last.pt'}; this step changed no weight)")
        factor = self.schedule.factor(self.step)
        for group, opt in self.optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if self.cfg.clip > 0 and params:
                norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip)
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under fsdp
                totals[f"grad_norm_{group}"] = norm.detach().float()
            for g in opt.param_groups:
                g["lr"] = self.cfg.lr * factor
            opt.step()
        for k, v in totals.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        self._steps += 1
        self.step += 1

    def log_metrics(self) -> dict[str, float]:
        """The mean of each train metric over the steps since the last call and over ranks (one all-reduce
        and one host sync), with the learning rate; the sums restart."""
        keys = sorted(self._sums)
        values: list[float] = []
        if keys:
            stacked = torch.stack([self._sums[k] for k in keys]).double() / max(self._steps, 1)
            if self.dist.active:
                torch.distributed.all_reduce(stacked)
                stacked /= self.dist.world
            values = stacked.tolist()
        self._sums, self._steps = {}, 0
        return {**dict(zip(keys, values, strict=True)), "lr": self.cfg.lr * self.schedule.factor(self.step - 1)}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.valid_set is None or len(self.valid_set) == 0:
            return {}
        for net in self.stage.raw.values():
            net.eval()
        size = max(self.dist.world, self.cfg.batch_size // self.cfg.grad_accum)
        totals: dict[str, float] = {}
        n = 0
        for start in range(0, min(len(self.valid_set), size * self.cfg.valid_batches), size):
            indices = list(range(start, min(start + size, len(self.valid_set))))[self.dist.rank :: self.dist.world]
            if not indices:
                continue
            with self._autocast():
                metrics = self.stage.valid_step(self._to_device(self.stage.collate([self.valid_set[j] for j in indices])))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)  # validation is rare: a sync per batch is fine
            n += 1
        return mean(self.dist, {k: v / max(n, 1) for k, v in totals.items()})

    # ---- the run ----------------------------------------------------------------------------------

    def _throughput(self, since: float, steps: int) -> dict[str, float]:
        """Every rank's batch lengths since the last train log, scaled, per second (and the count restarted);
        with a known peak, `mfu`: the counted model FLOPs of `steps` steps per second over the peak."""
        name, scale = self.stage.throughput
        amount, self._amount = mean(self.dist, {name: self._amount * scale})[name] * self.dist.world, 0
        elapsed = max(time.perf_counter() - since, 1e-9)
        out = {name: amount / elapsed}
        if self._step_flops:
            out["mfu"] = self._step_flops * steps / elapsed / self._peak
        return out

    def _log(self, prefix: str, metrics: dict[str, float]) -> None:
        if not self.dist.main:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run drops the events of the steps it makes again.
            self.writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=self._resumed_at)
        for k, v in metrics.items():
            self.writer.add_scalar(f"{self.name}/{prefix}/{k}", v, self.step)
        with open(self.run_dir / "log.jsonl", "a") as f:
            import json

            row = {"stage": self.name, "split": prefix, "step": self.step, "time": time.perf_counter() - self._start}
            f.write(json.dumps({**row, **metrics}) + "\n")

    def run(self) -> dict[str, float]:
        """Train to `cfg.steps`, validating and checkpointing on the way; export at the end."""
        resumed = self.resume()
        self._resumed_at = self.step + 1 if resumed else None
        if self.dist.main:
            if resumed:
                log.info("%s: resumed at step %d", self.name, self.step)
                self._truncate_log()
            if self.on_start is not None:
                self.on_start()
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=self.name, disable=not self.dist.main or None,
                   dynamic_ncols=True)
        last: dict[str, float] = {}
        start = since = self._start = time.perf_counter()
        logged_at = self.step
        while self.step < self.cfg.steps:
            self.train_step()
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                last = self.log_metrics()
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if not k.startswith("grad")})
                self._log("train", {**last, **self._throughput(since, self.step - logged_at)})
                since, logged_at = time.perf_counter(), self.step
            if self.step % self.cfg.valid_every == 0 or self.step == self.cfg.steps:
                valid = self.validate()
                if valid:
                    self._log("valid", valid)
                    self.schedule.on_valid(valid["loss"])
                    if valid["loss"] < self.best:
                        self.best = valid["loss"]
                        self.save("best.pt")
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                self.save("last.pt")
        bar.close()
        self._batches = None  # lets the loader's workers go
        if self.writer is not None:
            self.writer.close()
        if self.sharded:
            self._export_sharded()
        elif self.dist.main:
            best = self.ckpt_dir / "best.pt"
            if self.cfg.export == "best" and best.is_file():
                nets = checkpoint.load(best)["nets"]
                for k, m in self.stage.raw.items():
                    m.load_state_dict(nets[k])
                log.info("%s: exporting the best validation loss (%.4g)", self.name, self.best)
            self.stage.export(self.run_dir / "export")
        if self.dist.main:
            log.info("%s: %d steps in %.1f s", self.name, self.step, time.perf_counter() - start)
        barrier(self.dist)
        return last

    def _export_sharded(self) -> None:
        """Gather the whole weights (every rank takes part), put them into plain copies of the networks on
        the main rank and export those: the released layout, as from any other run."""
        best = self.ckpt_dir / "best"
        if self.cfg.export == "best" and sharded.is_checkpoint(best):
            sharded.load(best, self.stage.raw, self.optimizers)
            if self.dist.main:
                log.info("%s: exporting the best validation loss (%.4g)", self.name, self.best)
        weights = sharded.full_weights(self.stage.raw)
        if self.dist.main:
            trained = self.stage.raw
            for k, m in self._templates.items():
                m.load_state_dict(weights[k])
            self.stage.raw = dict(self._templates)
            try:
                self.stage.export(self.run_dir / "export")
            finally:
                self.stage.raw = trained
