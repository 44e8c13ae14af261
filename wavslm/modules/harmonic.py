"""Harmonic-plus-noise waveform decoder: periodic by construction, driven by a predicted F0.

qfeats `(B, T, input_dim)` -> sig `(B, T * hop_length)` at `sample_rate`.

A GAN decoder (WaveNeXt, Vocos) must learn phase coherence across frames before its output has any
harmonics, which takes far more steps than a laptop can give it. This decoder never has to: the ConvNeXt
backbone of Vocos and WaveNeXt predicts, per frame, a source-filter description of the sound, and a fixed
synthesiser turns it into samples:

    f0        fundamental frequency in [f0_min, f0_max] Hz (log-scaled sigmoid)
    voicing   in [0, 1]: how much of the frame is periodic
    envelope  log-amplitudes on `envelope_bins` points evenly spaced from 0 Hz to Nyquist; harmonic k is
              given the envelope at k * f0 (zero at or above Nyquist), so the filter does not move with F0
    noise     amplitudes of `noise_bands` equal-width bands of a fixed band-limited noise; voicing mutes the
              bands below `voiced_noise_cutoff` (a voiced frame's low frequencies are harmonics, so the
              noise cannot stand in for harmonics whose F0 is not yet right: the failure mode of such
              decoders, which then sound whispered), and scales every band by 1 - voicing * (1 -
              `voiced_noise_gain`) (1: left as predicted)

Spectral losses let noise stand in for harmonics whose frequencies are not quite right, so a decoder
trained on them alone renders voiced frames noisier than speech: a pitch tracker then hears many of them
as unvoiced. `voiced_noise_gain` corrects that after training, without touching the weights (the recipe
measures it on validation speech: `wavslm.train.codec.calibrate`).

Within frame t every control moves linearly from frame t-1's value to frame t's, reaching it on the
frame's last sample. The oscillator's phase is the running sum of 2*pi*f0/sample_rate (float64). The
noise is a fixed table of `noise_period` samples (drawn once from a seeded generator), read at absolute
sample positions. So a stream carries the backbone's conv contexts, the last frame's controls, the phase
and the sample position, and chunk by chunk it equals the one-pass output.

The controls are exposed (`controls`, `render`) so training can supervise F0 and voicing directly; the
spectral losses do not reach F0 through the phase, where their gradient is unreliable.
"""

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from wavslm.config import from_dict, to_dict
from wavslm.errors import InputError
from wavslm.modules.linear import Linear
from wavslm.modules.wavenext import ConvNeXtBackbone, ConvNeXtState


@dataclass(frozen=True)
class HarmonicNoiseConfig:
    """`decoder_config` of a `"HarmonicNoise"` decoder."""

    input_dim: int = 1024
    num_layers: int = 8
    dim: int = 512
    ffn_dim: int = 1536
    kernel_size: int = 7
    layerscale_init: float | None = None
    hop_length: int = 480
    sample_rate: int = 24000
    num_harmonics: int = 128
    envelope_bins: int = 64
    noise_bands: int = 32
    f0_min: float = 50.0
    f0_max: float = 500.0
    noise_period: int = 65536
    noise_seed: int = 0
    voiced_noise_cutoff: float = 2000.0  # Hz: voicing silences the noise bands below (0: never)
    voiced_noise_gain: float = 1.0  # the noise a fully voiced frame keeps, above the cutoff (1: all of it)
    causal: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "HarmonicNoiseConfig":
        return from_dict(cls, values, "decoder_config (HarmonicNoise)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


class Controls(NamedTuple):
    """Per-frame synthesis controls: f0 `(B, T)` Hz, voicing `(B, T)`, harmonic amplitudes `(B, T, K)`,
    noise band amplitudes `(B, T, M)`."""

    f0: Tensor
    voicing: Tensor
    harmonics: Tensor
    noise: Tensor


class HarmonicNoiseState(NamedTuple):
    """Stream state: the backbone's conv contexts, the last frame's controls (f0, voiced harmonic amplitudes,
    noise amplitudes: `(B, 1 + K + M)`), the oscillator phase `(B,)` float64 in [0, 2*pi) and the samples
    emitted so far `(B,)`."""

    backbone: ConvNeXtState
    last: Tensor
    phase: Tensor
    position: Tensor


def _amplitude(x: Tensor) -> Tensor:
    """Logits -> amplitudes in (0, 2]: a sigmoid raised to ln(10), so the scale is logarithmic near 0."""
    return 2.0 * torch.sigmoid(x) ** math.log(10.0) + 1e-7


def band_noise(bands: int, period: int, seed: int) -> Tensor:
    """`(bands, period)`: white Gaussian noise split into equal-width frequency bands (circularly, so the
    table repeats without a seam), each band scaled to unit RMS."""
    cpu = torch.device("cpu")  # real numbers even when the module is built on the meta device
    gen = torch.Generator(cpu).manual_seed(seed)
    spec = torch.fft.rfft(torch.randn(period, generator=gen, dtype=torch.float64, device=cpu))
    bins = spec.shape[0]
    edges = [round(b * bins / bands) for b in range(bands + 1)]
    table = torch.zeros(bands, period, dtype=torch.float64, device=cpu)
    for b in range(bands):
        masked = torch.zeros_like(spec)
        masked[edges[b] : edges[b + 1]] = spec[edges[b] : edges[b + 1]]
        band = torch.fft.irfft(masked, period)
        table[b] = band / band.pow(2).mean().sqrt().clamp_min(1e-12)
    return table.float()


def _ramped(sample_wise: Tensor, values: Tensor, last: Tensor) -> Tensor:
    """Sum over channels of `sample_wise (B, T, hop, C)` weighted by controls that move linearly, within each
    frame, from the previous frame's `values (B, T, C)` (`last (B, C)` before the first) to the frame's own,
    reaching them on its last sample -> `(B, T, hop)`. Two matrix products; no per-sample control tensor."""
    prev = torch.cat([last[:, None], values[:, :-1]], dim=1)
    hop = sample_wise.shape[2]
    w = torch.arange(1, hop + 1, dtype=values.dtype, device=values.device) / hop  # (hop,)
    at_prev = (sample_wise @ prev[..., None])[..., 0]
    at_cur = (sample_wise @ values[..., None])[..., 0]
    return at_prev + w * (at_cur - at_prev)


class HarmonicNoise(nn.Module):
    """Harmonic-plus-noise decoder: qfeats `(B, T, input_dim)` -> sig `(B, T * hop_length)`.

    `forward(qfeats, state=None) -> (sig, state)`; the state is a `HarmonicNoiseState` when causal, else None.
    """

    def __init__(self, config: HarmonicNoiseConfig) -> None:
        super().__init__()
        if not 0 < config.f0_min < config.f0_max < config.sample_rate / 2:
            raise InputError(f"a HarmonicNoise decoder needs 0 < f0_min < f0_max < sample_rate / 2, got "
                             f"f0_min={config.f0_min}, f0_max={config.f0_max}, sample_rate={config.sample_rate}")
        if not 0.0 <= config.voiced_noise_gain <= 1.0:
            raise InputError(f"a HarmonicNoise decoder needs 0 <= voiced_noise_gain <= 1, got {config.voiced_noise_gain}")
        for key in ("hop_length", "sample_rate", "num_harmonics", "envelope_bins", "noise_bands", "noise_period"):
            if getattr(config, key) < (2 if key == "envelope_bins" else 1):
                raise InputError(f"a HarmonicNoise decoder needs a positive {key}, got {getattr(config, key)}")
        self.config = config
        self.causal = config.causal
        self.hop_length = config.hop_length
        self.sample_rate = config.sample_rate
        self.backbone = ConvNeXtBackbone(
            config.input_dim,
            config.num_layers,
            config.dim,
            config.ffn_dim,
            config.kernel_size,
            config.layerscale_init,
            config.causal,
            pad_mode="replicate",
        )
        self.head = Linear(config.dim, 2 + config.envelope_bins + config.noise_bands)
        # Drawn from a fixed seed, not stored in checkpoints: the same table on every machine.
        self.register_buffer("noise_table", band_noise(config.noise_bands, config.noise_period, config.noise_seed),
                             persistent=False)
        starts = torch.arange(config.noise_bands, device="cpu") * (config.sample_rate / 2 / config.noise_bands)
        self.register_buffer("low_bands", (starts < config.voiced_noise_cutoff).float(), persistent=False)

    # ---- controls ---------------------------------------------------------------------------------

    def controls(self, qfeats: Tensor, state: HarmonicNoiseState | None = None) -> tuple[Controls, ConvNeXtState | None]:
        """qfeats `(B, T, input_dim)` -> the frames' `Controls` and the backbone's new state."""
        if state is not None and not self.causal:
            raise ValueError("a non-causal decoder cannot stream; call it with state=None")
        h, backbone = self.backbone(qfeats, None if state is None else state.backbone)
        c = self.config
        out = self.head(h)
        f0_logit, voicing_logit = out[..., 0], out[..., 1]
        envelope, noise = out[..., 2 : 2 + c.envelope_bins], out[..., 2 + c.envelope_bins :]
        f0 = c.f0_min * (c.f0_max / c.f0_min) ** torch.sigmoid(f0_logit)
        # The envelope (log-amplitude logits) at each harmonic's frequency, by linear interpolation.
        nyquist = c.sample_rate / 2
        k = torch.arange(1, c.num_harmonics + 1, dtype=f0.dtype, device=f0.device)
        freqs = f0.detach()[..., None] * k  # (B, T, K)
        pos = (freqs / nyquist * (c.envelope_bins - 1)).clamp(max=c.envelope_bins - 1)
        low = pos.floor().long().clamp(max=c.envelope_bins - 2)
        frac = pos - low
        env = torch.gather(envelope, -1, low) * (1 - frac) + torch.gather(envelope, -1, low + 1) * frac
        harmonics = _amplitude(env) * (freqs < nyquist)
        voicing = torch.sigmoid(voicing_logit)
        noise = _amplitude(noise) * (1 - voicing[..., None] * self.low_bands)
        if c.voiced_noise_gain != 1.0:
            noise = noise * (1 - voicing[..., None] * (1 - c.voiced_noise_gain))
        return Controls(f0, voicing, harmonics, noise), backbone

    # ---- synthesis --------------------------------------------------------------------------------

    def render(self, controls: Controls, state: HarmonicNoiseState | None = None) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Controls of T >= 1 frames -> sig `(B, T * hop)` and the synthesiser's new (last, phase, position)."""
        f0, voicing, harmonics, noise = controls
        batch, frames = f0.shape
        hop, K = self.hop_length, harmonics.shape[-1]
        amps = voicing[..., None] * harmonics  # (B, T, K)
        packed = torch.cat([f0[..., None], amps, noise], dim=-1)  # (B, T, 1 + K + M)
        if state is None:  # a stream starts as if its first frame had been going on before it
            last = packed[:, 0]
            phase = torch.zeros(batch, dtype=torch.float64, device=f0.device)
            position = torch.zeros(batch, dtype=torch.long, device=f0.device)
        else:
            last, phase, position = state.last, state.phase, state.position
        # Phase: a float64 running sum, without gradient (F0 is taught directly; see the module notes).
        with torch.no_grad():
            prev_f0 = torch.cat([last[:, :1], f0[:, :-1]], dim=1).double()
            w = torch.arange(1, hop + 1, dtype=torch.float64, device=f0.device) / hop
            f0_n = (prev_f0[..., None] + w * (f0.detach().double() - prev_f0)[..., None]).flatten(1)  # (B, N)
            phase_n = torch.remainder(phase[:, None] + (2 * math.pi / self.sample_rate) * f0_n.cumsum(1), 2 * math.pi)
            # k * phase in float32 is within k ulps of 2*pi (~6e-5 rad at k = 128): inaudible, and 4x cheaper.
            k = torch.arange(1, K + 1, dtype=f0.dtype, device=f0.device)
            sines = torch.sin(phase_n.to(f0.dtype)[..., None] * k)  # (B, N, K)
            index = (position[:, None] + torch.arange(frames * hop, device=f0.device)) % self.noise_table.shape[1]
            table = self.noise_table.to(f0.dtype)[:, index].permute(1, 2, 0)  # (B, N, M)
        voiced = _ramped(sines.view(batch, frames, hop, K), amps, last[:, 1 : 1 + K])
        unvoiced = _ramped(table.reshape(batch, frames, hop, -1), noise, last[:, 1 + K :])
        return (voiced + unvoiced).flatten(1), (packed[:, -1], phase_n[:, -1], position + frames * hop)

    @torch.no_grad()
    def advance(self, qfeats: Tensor, state: HarmonicNoiseState | None = None) -> HarmonicNoiseState | None:
        """The state `forward` would leave after `qfeats`, without rendering its samples (a prompt read before
        a continuation): the oscillator's phase moves by the sum of the F0 ramps, taken in closed form."""
        if not self.causal:
            raise ValueError("only a causal decoder streams")
        if qfeats.shape[1] == 0:
            return state
        (f0, voicing, harmonics, noise), backbone = self.controls(qfeats, state)
        packed = torch.cat([f0[..., None], voicing[..., None] * harmonics, noise], dim=-1)
        batch, frames = f0.shape
        if state is None:
            last, position = packed[:, 0], torch.zeros(batch, dtype=torch.long, device=f0.device)
            phase = torch.zeros(batch, dtype=torch.float64, device=f0.device)
        else:
            last, phase, position = state.last, state.phase, state.position
        hop = self.hop_length
        prev_f0 = torch.cat([last[:, :1], f0[:, :-1]], dim=1).double()
        # The hop samples of a frame ramp from the previous F0 to this one: sum_j prev + j/hop * (f0 - prev).
        cycles = (hop * prev_f0 + (hop + 1) / 2 * (f0.double() - prev_f0)).sum(1)
        phase = torch.remainder(phase + (2 * math.pi / self.sample_rate) * cycles, 2 * math.pi)
        return HarmonicNoiseState(backbone, packed[:, -1], phase, position + frames * hop)

    def forward(self, qfeats: Tensor, state: HarmonicNoiseState | None = None, with_controls: bool = False):
        """`(sig, state)`, or `(sig, state, controls)` with `with_controls` (training supervises F0 and voicing
        through the module's own call, so that a DDP wrapper sees it)."""
        if qfeats.shape[1] == 0:  # nothing new: keep the state (a fresh stream needs a first frame)
            sig, new = qfeats.new_zeros(qfeats.shape[0], 0), state
            controls = None
        else:
            controls, backbone = self.controls(qfeats, state)
            sig, (last, phase, position) = self.render(controls, state)
            new = HarmonicNoiseState(backbone, last, phase, position) if self.causal else None
        return (sig, new, controls) if with_controls else (sig, new)
