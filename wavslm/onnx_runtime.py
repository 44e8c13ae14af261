"""A WavSLM exported by `wavslm export onnx`, run by ONNX Runtime: prompts encoded, continuations generated.

`OnnxWavSLM(folder)` opens the graphs that `export.json` lists. `generate` continues token prompts chunk
by chunk through the `dequantize`, `lm` and `synthesize` step graphs, sampling with the same per-row seeded
generators and functions as `generation.generate_steps`, so a seeded continuation gives the same tokens
as PyTorch's (to within the float32 differences of the two runtimes, which can move a sample only at a
near tie) and its audio.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import InputError
from .generation.sampling import Sampling, row_generators, sample_rows


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

    def encode(self, sig: np.ndarray) -> np.ndarray:
        """`sig (B, N)` float32 at the codec's input rate -> tokens `(B, T)` int64."""
        return self.sessions["codec_encode"].run(None, {"sig": np.ascontiguousarray(sig, dtype=np.float32)})[0]

    def _codec_step(self, name: str, x: np.ndarray, state: list[np.ndarray] | None):
        """`name` (dequantize, synthesize) on one chunk: a fresh stream when `state` is None."""
        if state is None:
            out, *state = self.sessions[f"{name}_start"].run(None, {self.meta["graphs"][f"{name}_start"]["inputs"][0]: x})
        else:
            graph = self.meta["graphs"][f"{name}_step"]["inputs"]
            out, *state = self.sessions[f"{name}_step"].run(None, dict(zip(graph, [x, *state], strict=True)))
        return out, state

    def _lm(self, qfeats: np.ndarray, pos: np.ndarray, keys: np.ndarray, values: np.ndarray):
        return self.sessions["lm_step"].run(None, {"qfeats": qfeats, "pos": pos, "keys": keys, "values": values})

    def read(self, toks: np.ndarray):
        """Read one prompt `(T,)` (whole chunks): the last chunk's logits and the state `(pos, keys, values,
        decompressor, decoder)`, each with a batch dimension of 1. The codec's streams start on the whole
        prompt at once (the decoder's audio is not kept); the LM reads it chunk by chunk."""
        C = self.chunk
        if len(toks) == 0 or len(toks) % C:
            raise InputError(f"a token prompt must be whole chunks of {C} tokens, got {len(toks)}")
        layers, heads, window, head_dim = self.state_shape
        keys = np.zeros((layers, 1, heads, window, head_dim), np.float32)
        values = np.zeros_like(keys)
        qfeats, contexts = self._codec_step("dequantize", toks[None].astype(np.int64), None)
        _, decoder = self._codec_step("synthesize", qfeats, None)
        pos = np.zeros(1, np.int64)
        for start in range(0, len(toks), C):
            logits, keys, values = self._lm(qfeats[:, start : start + C], pos, keys, values)
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
        from .audio import resample

        rate = self.meta["codec"]["sample_rate_input"]
        sig = resample(sig.reshape(1, -1).float(), sample_rate, rate)
        toks = torch.from_numpy(self.encode(sig.numpy()))[0]
        if len(toks) < self.chunk:
            raise InputError(f"the prompt is shorter than one chunk ({self.chunk} tokens = "
                             f"{1000 * self.chunk / self.frame_rate:.0f} ms)")
        return [toks[len(toks) % self.chunk :]]

    def generate_steps(self, prompts: list[Tensor], steps: int, top_p: float | None = None, top_k: int | None = None,
                       temp: float = 0.8, seed: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Continue token prompts (rows of whole chunks, any lengths) for `steps` steps, yielding each
        step's tokens `(B, C)` and audio `(B, samples per chunk)` at the codec's output rate as soon as it
        is decoded. Row b samples with its own generator seeded `seed + b`, as `generate_steps` does."""
        read = [self.read(np.asarray(row, dtype=np.int64)) for row in prompts]
        logits = np.concatenate([r[0] for r in read])
        pos = np.concatenate([r[1][0] for r in read])
        keys = np.concatenate([r[1][1] for r in read], axis=1)
        values = np.concatenate([r[1][2] for r in read], axis=1)
        contexts = [np.concatenate(parts) for parts in zip(*(r[1][3] for r in read), strict=True)]
        decoder = [np.concatenate(parts) for parts in zip(*(r[1][4] for r in read), strict=True)]
        samplings = [Sampling(temp, top_p, top_k)] * len(prompts)
        generators = row_generators(len(prompts), seed, torch.device("cpu"))
        for step in range(steps):
            toks = sample_rows(torch.from_numpy(logits), samplings, generators)
            qfeats, contexts = self._codec_step("dequantize", toks.numpy(), contexts)
            sig, decoder = self._codec_step("synthesize", qfeats, decoder)
            yield toks, torch.from_numpy(sig)
            if step + 1 < steps:
                logits, keys, values = self._lm(qfeats, pos, keys, values)
                pos = pos + self.chunk

    def generate(self, prompts: list[Tensor], steps: int, **sampling) -> tuple[Tensor, Tensor]:
        """`generate_steps` gathered: the tokens `(B, steps * C)` and the audio `(B, steps * samples per chunk)`."""
        parts = list(self.generate_steps(prompts, steps, **sampling))
        return torch.cat([t for t, _ in parts], dim=1), torch.cat([a for _, a in parts], dim=1)
