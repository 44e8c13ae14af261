"""Tokenize a manifest with a codec into token shards, resumably and split over ranks.

    manifest -> rank r takes utterances r, r + W, r + 2W, ... -> output_dir/part-{r:03d}/ (a ShardWriter)
             -> once every part is complete: merge_parts -> output_dir/{tokens.bin, offsets.npy, ...}

Each utterance is committed to its part as soon as it is encoded, tagged with `item` (its line in the
manifest), so a killed run resumes where it stopped and the merged shards are in manifest order whatever
the world size. A part is complete when its `done.json` exists (written last, atomically). The merge is
left to the caller in a multi-process run (after a barrier); `tokenize_manifest` merges by itself when it
is rank 0 and finds every part complete, which is always the case with one process.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..audio import load_audio
from ..codec import Codec
from ..errors import InputError
from ..io import output_lock, write_atomic, write_json
from .manifest import as_entries
from .shards import ShardWriter, TokenShards, merge_shards

DONE, SKIPPED = "done.json", "skipped.jsonl"

log = logging.getLogger(__name__)


def part_dir(output_dir: str | os.PathLike, rank: int) -> Path:
    return Path(output_dir) / f"part-{rank:03d}"


@torch.no_grad()
def encode_long(codec: Codec, sig: Tensor, window_seconds: float = 8.0) -> Tensor:
    """`sig (N,)` or `(1, N)` at `codec.sample_rate_input` -> `toks (T,)` int64, equal to `codec.encode(sig)`.

    A causal codec runs over windows of whole chunks (about `window_seconds` each) carrying its streaming
    state, so memory does not grow with the file; a non-causal one has to see the whole signal at once.
    """
    sig = sig.reshape(1, -1)
    if sig.shape[1] < codec.chunk_size:
        raise InputError(f"{sig.shape[1]} samples is shorter than one codec chunk ({codec.chunk_size} samples)")
    if not codec.causal:
        return codec.encode(sig)[0].cpu()
    device = next(codec.parameters()).device
    window = codec.chunk_size * max(1, round(window_seconds * codec.sample_rate_input / codec.chunk_size))
    enc_state = comp_state = None
    toks = []
    # The last window takes the partial chunk at the end, which the offline pass also encodes.
    for start in range(0, sig.shape[1], window):
        x = sig[:, start : start + window].float().to(device)
        feats, enc_state = codec.encoder(x, enc_state)
        lats, comp_state = codec.compressor(feats, comp_state)
        toks.append(codec.quantizer.lats_to_toks(lats)[0].cpu())
    return torch.cat(toks)


@dataclass
class TokenizeSummary:
    """What one rank's `tokenize_manifest` call did."""

    part: Path
    rank: int
    world_size: int
    assigned: int = 0  # utterances of the manifest this rank is responsible for
    done_before: int = 0  # already in the part from an earlier (interrupted) run
    written: int = 0  # encoded and written by this call
    num_tokens: int = 0  # tokens written by this call
    audio_seconds: float = 0.0  # audio encoded by this call
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    merged: Path | None = None  # the merged shard folder, when this call merged

    def describe(self) -> str:
        text = (f"rank {self.rank}/{self.world_size}: {self.written} utterances encoded "
                f"({self.audio_seconds / 3600:.2f} h, {self.num_tokens} tokens), {self.done_before} already done, "
                f"{len(self.skipped)} skipped")
        for path, reason in self.skipped[:10]:
            text += f"\n  skipped {path}: {reason}"
        if len(self.skipped) > 10:
            text += f"\n  ... and {len(self.skipped) - 10} more"
        if self.merged is not None:
            text += f"\nmerged shards in {self.merged}"
        return text


def tokenize_manifest(
    manifest: str | os.PathLike | list[dict],
    output_dir: str | os.PathLike,
    codec: Codec | str | os.PathLike,
    rank: int = 0,
    world_size: int = 1,
    batch_seconds: float = 8.0,
    progress: bool = True,
    codec_ref: str | None = None,
    merge: bool = True,
    workers: int = 0,
) -> TokenizeSummary:
    """Encode this rank's share of `manifest` into `output_dir/part-{rank:03d}/`, resuming if it exists.

    Args:
        manifest: a JSONL manifest path or its entries (`read_manifest`).
        output_dir: where the parts and, after the merge, the shards go.
        codec: a `Codec` (on the device to use) or a reference for `Codec.from_pretrained` (on CPU).
        rank, world_size: this process takes utterances `rank::world_size`.
        batch_seconds: audio per encoder call for a causal codec (memory does not grow with the file).
        progress: a tqdm bar on a terminal.
        codec_ref: how to name the codec in meta.json (defaults to `codec` when that is a reference).
        merge: as rank 0, merge the parts when all are complete (see `merge_parts`).
        workers: DataLoader worker processes that read and resample the audio ahead of the encoder (0: in
            this process); the shards are the same, in the same order, whatever the number.

    Unreadable files and files shorter than one codec chunk are skipped, each with its reason.
    """
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not in [0, world_size={world_size})")
    if not isinstance(codec, Codec):
        codec_ref = codec_ref or str(codec)
        codec = Codec.from_pretrained(codec)
    entries = as_entries(manifest)
    items = range(rank, len(entries), world_size)
    part = part_dir(output_dir, rank)
    summary = TokenizeSummary(part=part, rank=rank, world_size=world_size, assigned=len(items))

    with output_lock(part):  # one writer per part: a second run into the same folder stops at once
        _check_split(part, rank, world_size)
        extra = {"rank": rank, "world_size": world_size}
        with ShardWriter(part, codec.vocab_size, codec=codec_ref, frame_rate=codec.frame_rate, extra=extra) as writer:
            done = _check_resume(writer, entries, rank, world_size)
            summary.done_before = len(done)
            (part / DONE).unlink(missing_ok=True)  # this part is incomplete until the end of this call
            bar = tqdm(total=len(items), initial=len(done), desc=f"tokenize [{rank}]", unit="utt",
                       disable=None if progress else True, delay=1.0, leave=False)
            todo = [item for item in items if item not in done]
            with bar:
                for item, sig, error in _read_ahead(entries, todo, codec.sample_rate_input, workers):
                    path = entries[item]["path"]
                    try:
                        if error is not None:
                            raise InputError(error)
                        toks = encode_long(codec, sig, batch_seconds)
                    except InputError as err:
                        summary.skipped.append((path, str(err)))
                        log.info("skipping '%s': %s", path, err)
                        bar.update()
                        continue
                    writer.append(toks, path, item=item)
                    summary.written += 1
                    summary.num_tokens += toks.numel()
                    summary.audio_seconds += sig.shape[1] / codec.sample_rate_input
                    bar.update()
        skipped = [{"path": p, "reason": r} for p, r in summary.skipped]
        write_json(part / DONE, {"rank": rank, "world_size": world_size, "assigned": len(items),
                                 "written": len(writer), "skipped": skipped})
        if merge and rank == 0 and all((part_dir(output_dir, r) / DONE).exists() for r in range(world_size)):
            merge_parts(output_dir, world_size)
            summary.merged = Path(output_dir)
    return summary


class _Audio(torch.utils.data.Dataset):
    """Item `k` of `todo`: `(manifest item, sig (1, N) at `rate` or None, the reason it could not be read)`."""

    def __init__(self, entries: list[dict], todo: list[int], rate: int):
        self.entries, self.todo, self.rate = entries, todo, rate

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[int, Tensor | None, str | None]:
        item = self.todo[k]
        try:
            return item, load_audio(self.entries[item]["path"], self.rate, mono=True)[0], None
        except InputError as err:  # reported by the main process, in order, like any other skip
            return item, None, str(err)


def _read_ahead(entries: list[dict], todo: list[int], rate: int, workers: int):
    """The audio of `todo`, in order, read by `workers` processes ahead of the caller (or by it)."""
    if workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    dataset = _Audio(entries, todo, rate)
    if workers == 0 or not todo:
        yield from (dataset[k] for k in range(len(dataset)))
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2)
    yield from loader


def _check_split(part: Path, rank: int, world_size: int) -> None:
    """Refuse to resume a part written by another rank or world size, before touching it."""
    meta = part / "meta.json"
    if not meta.exists():
        return
    try:
        old = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read '{meta}': {err}") from err
    if (old.get("rank"), old.get("world_size")) not in ((None, None), (rank, world_size)):
        raise InputError(f"'{part}' was written by rank {old.get('rank')} of {old.get('world_size')}, not rank "
                         f"{rank} of {world_size}; use the same world size or a new output folder")


def _check_resume(writer: ShardWriter, entries: list[dict], rank: int, world_size: int) -> set[int]:
    """The manifest items already in the part, after checking they come from this manifest and split."""
    done = set()
    for entry in writer.entries:
        item = entry.get("item")
        if not isinstance(item, int) or item % world_size != rank or item >= len(entries):
            raise InputError(f"'{writer.folder}' was written for another manifest or world size (it holds item "
                             f"{item!r}, not one of rank {rank} of {world_size}); use a new output folder")
        if entry["path"] != entries[item]["path"]:
            raise InputError(f"'{writer.folder}' was written from another manifest: item {item} is "
                             f"'{entry['path']}' there but '{entries[item]['path']}' now; use a new output folder")
        done.add(item)
    return done


def merge_parts(output_dir: str | os.PathLike, world_size: int, keep_parts: bool = True) -> TokenShards:
    """Merge the complete parts `output_dir/part-000 ... part-{world_size-1}` into shards in `output_dir`.

    The shards list the manifest's utterances in order (those skipped left out, and listed with their
    reasons in `output_dir/skipped.jsonl`), identical for any world size. Call it on one process once
    every rank has finished (e.g. rank 0 after a barrier).
    """
    out = Path(output_dir)
    parts = [part_dir(out, r) for r in range(world_size)]
    missing = [p.name for p in parts if not (p / DONE).exists()]
    if missing:
        raise InputError(f"cannot merge '{out}': parts {', '.join(missing)} are not complete "
                         "(run or resume tokenization for those ranks first)")
    skipped = []
    for p in parts:
        done = json.loads((p / DONE).read_text())
        if done.get("world_size") != world_size:
            raise InputError(f"'{p}' was written with world size {done.get('world_size')}, not {world_size}")
        skipped.extend(done["skipped"])
    shards = merge_shards(parts, out, extra={"num_skipped": len(skipped)})
    write_atomic(out / SKIPPED, "".join(json.dumps(s) + "\n" for s in skipped))
    if not keep_parts:
        for p in parts:
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
    return shards
