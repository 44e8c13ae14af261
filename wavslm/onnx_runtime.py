"""A WavSLM exported by `wavslm export onnx`, run by ONNX Runtime: prompts encoded, continuations generated.

`OnnxWavSLM(folder)` opens the graphs that `export.json` lists. `generate` continues token prompts chunk
by chunk through the `dequantize`, `lm` and `synthesize` step graphs, sampling with the same per-row seeded
generators and functions as `generation.generate_steps`, so a seeded continuation gives the same tokens
as PyTorch's (to within the float32 differences of the two runtimes, which can move a sample only at a
near tie) and its audio.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .audio import resample
from .errors import InputError
from .generation.prompts import by_length
from .generation.sampling import Sampling, row_generators, sample_rows


@dataclass
class OnnxStreams:
    """The state of rows being continued: the next logits, the LM's positions and key/value windows, and
    the decompressor's and decoder's streams (each array with the rows as its batch dimension)."""

    logits: np.ndarray
    pos: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    contexts: list[np.ndarray]
    decoder: list[np.ndarray]

    @staticmethod
    def cat(parts: list["OnnxStreams"]) -> "OnnxStreams":
        """The rows of `parts`, in order, in one state (copied)."""
        return OnnxStreams(
            np.concatenate([p.logits for p in parts]), np.concatenate([p.pos for p in parts]),
            np.concatenate([p.keys for p in parts], axis=1), np.concatenate([p.values for p in parts], axis=1),
            [np.concatenate(c) for c in zip(*(p.contexts for p in parts), strict=True)],
            [np.concatenate(d) for d in zip(*(p.decoder for p in parts), strict=True)])

    def rows(self, rows: list[int]) -> "OnnxStreams":
        """The state of `rows` alone (copied)."""
        return OnnxStreams(self.logits[rows], self.pos[rows], self.keys[:, rows], self.values[:, rows],
                           [c[rows] for c in self.contexts], [d[rows] for d in self.decoder])


class OnnxWavSLM:
    """The graphs of an exported WavSLM folder, each an `onnxruntime.InferenceSession` on the CPU."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as err:
            raise InputError("running exported graphs needs onnxruntime: pip install 'wavslm[onnx]'") from err
        folder = Path(folder)
        if not (folder / "export.json").is_file():
            raise InputError(f"'{folder}' has no export.json; make one with `wavslm export onnx MODEL -o {folder}`")
        self.meta = json.loads((folder / "export.json").read_text())
        if "lm" not in self.meta:
            raise InputError(f"'{folder}' holds a codec only; generating needs a WavSLM's export")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {name: onnxruntime.InferenceSession(str(folder / g["file"]), options,
                                                            providers=["CPUExecutionProvider"])
                         for name, g in self.meta["graphs"].items()}
        lm = self.meta["lm"]
        self.chunk, self.window = lm["chunk"], lm["window"]
        self.state_shape = (lm["layers"], lm["heads"], lm["window"], lm["head_dim"])
        self.quantize = "int8" if self.meta.get("quantize") else "none"

    def encode(self, sig: np.ndarray) -> np.ndarray:
        """`sig (B, N)` float32 at the codec's input rate -> tokens `(B, T)` int64."""
        return self.sessions["codec_encode"].run(None, {"sig": np.ascontiguousarray(sig, dtype=np.float32)})[0]

    def decode(self, toks: np.ndarray) -> np.ndarray:
        """Tokens `(B, T)` int64 -> `sig (B, samples)` float32 at the codec's output rate."""
        return self.sessions["codec_decode"].run(None, {"toks": np.ascontiguousarray(toks, dtype=np.int64)})[0]

    def empty_state(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The LM's `(pos, keys, values)` before anything is read, for `batch` rows."""
        layers, heads, window, head_dim = self.state_shape
        keys = np.zeros((layers, batch, heads, window, head_dim), np.float32)
        return np.zeros(batch, np.int64), keys, np.zeros_like(keys)

    def _codec_step(self, name: str, x: np.ndarray, state: list[np.ndarray] | None):
        """`name` (dequantize, synthesize) on one chunk: a fresh stream when `state` is None."""
        if state is None:
            out, *state = self.sessions[f"{name}_start"].run(None, {self.meta["graphs"][f"{name}_start"]["inputs"][0]: x})
        else:
            graph = self.meta["graphs"][f"{name}_step"]["inputs"]
            out, *state = self.sessions[f"{name}_step"].run(None, dict(zip(graph, [x, *state], strict=True)))
        return out, state

    def lm_step(self, qfeats: np.ndarray, pos: np.ndarray, keys: np.ndarray, values: np.ndarray):
        """One chunk of features `(B, C, D)` read after the key/value windows: `(logits, keys, values)`."""
        return self.sessions["lm_step"].run(None, {"qfeats": qfeats, "pos": pos, "keys": keys, "values": values})

    def read(self, toks: np.ndarray):
        """Read prompts of one length, `(T,)` or `(B, T)` (whole chunks): the last chunk's logits and the
        state `(pos, keys, values, decompressor, decoder)`, each with the rows as its batch dimension.
        The codec's streams start on the whole prompts at once (the decoder's audio is not kept), and so
        does the LM (`lm_prefill`)."""
        C = self.chunk
        toks = np.asarray(toks, dtype=np.int64).reshape(-1, np.shape(toks)[-1])
        if toks.shape[1] == 0 or toks.shape[1] % C:
            raise InputError(f"a token prompt must be whole chunks of {C} tokens, got {toks.shape[1]}")
        qfeats, contexts = self._codec_step("dequantize", toks, None)
        _, decoder = self._codec_step("synthesize", qfeats, None)
        if "lm_prefill" in self.sessions:  # one call (folders exported before it existed read chunk by chunk)
            logits, keys, values = self.sessions["lm_prefill"].run(None, {"qfeats": qfeats})
            pos = np.full(len(toks), toks.shape[1], np.int64)
        else:
            pos, keys, values = self.empty_state(len(toks))
            for start in range(0, toks.shape[1], C):
                logits, keys, values = self.lm_step(np.ascontiguousarray(qfeats[:, start : start + C]), pos, keys, values)
                pos = pos + C
        return logits, (pos, keys, values, contexts, decoder)

    @property
    def frame_rate(self) -> float:
        return self.meta["codec"]["frame_rate"]

    @property
    def sample_rate_output(self) -> int:
        return self.meta["codec"]["sample_rate_output"]

    def prompt_tokens(self, sig: Tensor, sample_rate: int) -> list[Tensor]:
        """A spoken prompt `(N,)` or `(1, N)` at `sample_rate` as one token row of whole chunks (its first
        `T % C` tokens dropped, as `generation.prompt_tokens` does)."""
        return self.prompt_rows([sig.reshape(1, -1)], sample_rate)

    def start(self, prompts: list[Tensor]) -> "OnnxStreams":
        """Read token prompts (rows of whole chunks, any lengths), each alone: the streams that continue them."""
        return OnnxStreams.cat([OnnxStreams(logits, *state) for logits, state in
                                (self.read(np.asarray(row, dtype=np.int64)) for row in prompts)])

    def steps(self, streams: "OnnxStreams", steps: int, top_p: float | None = None, top_k: int | None = None,
              temp: float = 0.8, seed: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Continue `streams` for `steps` steps, yielding each step's tokens `(B, C)` and audio `(B, samples
        per chunk)` at the codec's output rate as soon as it is decoded. Row b samples with its own
        generator seeded `seed + b`, as `generate_steps` does."""
        s = streams
        samplings = [Sampling(temp, top_p, top_k)] * len(s.pos)
        generators = row_generators(len(s.pos), seed, torch.device("cpu"))
        for step in range(steps):
            toks = sample_rows(torch.from_numpy(s.logits), samplings, generators)
            qfeats, s.contexts = self._codec_step("dequantize", toks.numpy(), s.contexts)
            sig, s.decoder = self._codec_step("synthesize", qfeats, s.decoder)
            yield toks, torch.from_numpy(sig)
            if step + 1 < steps:
                s.logits, s.keys, s.values = self.lm_step(qfeats, s.pos, s.keys, s.values)
                s.pos = s.pos + self.chunk

    def generate_steps(self, prompts: list[Tensor], steps: int, top_p: float | None = None, top_k: int | None = None,
                       temp: float = 0.8, seed: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """`start` then `steps`: continue token prompts (rows of whole chunks, any lengths)."""
        return self.steps(self.start(prompts), steps, top_p, top_k, temp, seed)

    # ---- serving (`wavslm serve --backend onnxruntime`): the engine's view of a model ----------------

    @property
    def sample_rate_input(self) -> int:
        return self.meta["codec"]["sample_rate_input"]

    @property
    def toks_per_step(self) -> int:
        return self.chunk

    def prompt_rows(self, sigs: list[Tensor], sample_rate: int) -> list[Tensor]:
        """Spoken prompts `(1, N_b)` at `sample_rate` as token rows of whole chunks, those of one length
        encoded in one batch (as `generation.prompt_tokens`); a prompt under one chunk is an InputError."""
        sigs = [resample(sig.reshape(1, -1).float(), sample_rate, self.sample_rate_input) for sig in sigs]
        rows: list = [None] * len(sigs)
        for index in by_length(sigs):
            for i, toks in zip(index, self.encode(torch.cat([sigs[i] for i in index]).numpy()), strict=True):
                if len(toks) < self.chunk:
                    raise InputError(f"the prompt is shorter than one chunk ({self.chunk} tokens = "
                                     f"{1000 * self.chunk / self.frame_rate:.0f} ms)")
                rows[i] = torch.from_numpy(toks[len(toks) % self.chunk :].copy())
        return rows

    def open_sessions(self, rows: list[Tensor], samplings: list[Sampling], seeds: list[int | None]) -> list["OnnxLive"]:
        """Single-row sessions that have read the token prompts `rows`, those of one length in one batch;
        session b samples with `samplings[b]` seeded `seeds[b]` (as `generation.open_sessions`)."""
        lives: list = [None] * len(rows)
        for index in by_length(rows):
            logits, state = self.read(torch.stack([rows[i] for i in index]).numpy())
            read = OnnxStreams(logits, *state)
            for r, i in enumerate(index):
                generator = row_generators(1, seeds[i], torch.device("cpu"))[0]
                lives[i] = OnnxLive(self, read if len(index) == 1 else read.rows([r]), samplings[i], generator)
        return lives

    def batch(self) -> "OnnxLiveBatch":
        return OnnxLiveBatch(self)

    def generate(self, prompts: list[Tensor], steps: int, **sampling) -> tuple[Tensor, Tensor]:
        """`generate_steps` gathered: the tokens `(B, steps * C)` and the audio `(B, steps * samples per chunk)`."""
        parts = list(self.generate_steps(prompts, steps, **sampling))
        return torch.cat([t for t, _ in parts], dim=1), torch.cat([a for _, a in parts], dim=1)


class OnnxLive:
    """One session of `OnnxWavSLM.open_sessions`: its streams (while outside a batch), sampling and generator."""

    def __init__(self, model: OnnxWavSLM, streams: OnnxStreams, sampling: Sampling, generator):
        self.model, self.streams, self.sampling, self.generator = model, streams, sampling, generator

    def drop_state(self) -> None:
        self.streams = None

    def close(self) -> None:
        self.drop_state()


class OnnxLiveBatch:
    """`generation.LiveBatch` on ONNX Runtime: single-row sessions stepped together, their states stacked
    along the graphs' batch dimension (copied in at a join and out at a leave, never at a step)."""

    def __init__(self, model: OnnxWavSLM):
        self.model = model
        self.members: list[OnnxLive] = []
        self.streams: OnnxStreams | None = None
        self._unread: np.ndarray | None = None  # the last step's features, not yet read by the LM

    def __len__(self) -> int:
        return len(self.members)

    def join(self, lives: list[OnnxLive]) -> None:
        """Take sessions in (each session's state moves into the batch)."""
        if any(live.model is not self.model or live.streams is None or live in self.members for live in lives):
            raise InputError("an OnnxLiveBatch takes open sessions of its own model, once each")
        if not lives:
            return
        self._read()
        self.streams = OnnxStreams.cat(([self.streams] if self.members else []) + [live.streams for live in lives])
        for live in lives:
            live.streams = None
        self.members += lives

    def leave(self, lives: list[OnnxLive], keep_state: bool = True) -> None:
        """Take members out; with `keep_state` each gets its own state back, else it is left to be closed."""
        if any(live not in self.members for live in lives):
            raise InputError("leave takes members of this batch")
        self._read()
        for live in lives:
            live.streams = self.streams.rows([self.members.index(live)]) if keep_state else None
        stay = [r for r, live in enumerate(self.members) if live not in lives]
        self.members = [self.members[r] for r in stay]
        self.streams = self.streams.rows(stay) if stay else None

    def step(self) -> list[tuple[Tensor, Tensor]]:
        """Advance every member by one step: per member its `(toks (1, C), audio (1, samples))`. The LM
        reads the step's tokens at the start of the next call (or at a join or leave), so the audio comes
        out first."""
        if not self.members:
            return []
        self._read()
        s, model = self.streams, self.model
        toks = sample_rows(torch.from_numpy(s.logits), [m.sampling for m in self.members],
                           [m.generator for m in self.members])
        qfeats, s.contexts = model._codec_step("dequantize", toks.numpy(), s.contexts)
        sig, s.decoder = model._codec_step("synthesize", qfeats, s.decoder)
        self._unread = qfeats
        audio = torch.from_numpy(sig)
        return [(toks[r : r + 1], audio[r : r + 1]) for r in range(len(self.members))]

    def _read(self) -> None:
        if self._unread is not None:
            unread, self._unread = self._unread, None
            s = self.streams
            s.logits, s.keys, s.values = self.model.lm_step(unread, s.pos, s.keys, s.values)
            s.pos = s.pos + self.model.chunk
