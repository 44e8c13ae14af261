"""What ships inside the package, and models loaded ready for inference.

Package data, found through `importlib.resources` so that an installed wheel works from any folder:

    wavslm/assets/tiny/{codec,lm}/    the bundled model (released layout) and its model card
    wavslm/assets/prompts/*.wav       the demo's prompts
    wavslm/configs/*.yaml             the presets (`tiny`, `paper_4k`): one section per training stage

`load_lm` / `load_codec` take a reference (folder, `.json`, Hub id; see `hub`) or None for the bundled
model, and `load_lm` applies one of the inference conversions in `OPTIMIZE`.
"""

from importlib import resources
from pathlib import Path

import torch

from . import hub
from .codec import Codec, CodecConfig, first_release
from .config import from_dict
from .errors import InputError
from .lm import WavSLM, WavSLMConfig, codec_target
from .modules.linear import Int8Linear
from .optimize import (
    CODEC_CONVERTED,
    LM_CONVERTED,
    convert_codec,
    convert_lm,
    fill_converted,
    optimize_for_inference,
    own_tensors,
    parameters_on_meta,
)


def package_path(*parts: str) -> Path:
    """A file or folder of the installed package as a real path (wheels install unpacked)."""
    place = resources.files("wavslm").joinpath(*parts)
    if not isinstance(place, Path):
        raise InputError(f"wavslm is installed in a zip archive; its data file {'/'.join(parts)} needs it unpacked")
    return place


BUNDLED_LM = package_path("assets", "tiny", "lm")
BUNDLED_CODEC = package_path("assets", "tiny", "codec")
PROMPTS = package_path("assets", "prompts")
PRESETS = package_path("configs")

# `--optimize` modes -> (dtype, quantize) for `optimize_for_inference`; "none" leaves the model as loaded.
OPTIMIZE: dict[str, tuple[str, str] | None] = {
    "none": None, "float32": ("float32", "none"), "bfloat16": ("bfloat16", "none"), "int8": ("float32", "int8"),
}


def preset_path(name: str) -> Path:
    """`tiny` -> the packaged `configs/tiny.yaml`; a path to a YAML file is taken as it is."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise InputError(f"unknown preset {name!r}; expected one of {known} or a .yaml file")
    return path


def _bundled(path: Path, what: str) -> str:
    if not (path / "config.json").is_file():
        raise InputError(f"no {what} given and no bundled model in {path.parent}; pass --{what} REF")
    return str(path)


def load_codec(ref: str | None = None, device: str = "cpu") -> Codec:
    """The codec `ref` (None: the bundled one) on `device`, in eval mode."""
    return Codec.from_pretrained(ref or _bundled(BUNDLED_CODEC, "codec")).to(device)


def load_lm(ref: str | None = None, device: str = "cpu", optimize: str = "none") -> WavSLM:
    """The WavSLM `ref` with its codec (None: the bundled one) on `device`, converted by `optimize`."""
    if optimize not in OPTIMIZE:
        raise InputError(f"optimize must be one of {list(OPTIMIZE)}, got {optimize!r}")
    ref = ref or _bundled(BUNDLED_LM, "model")
    if optimize == "int8" and torch.device(device).type == "cpu":
        return load_int8(ref)
    lm = WavSLM.from_pretrained(ref).to(device)
    if OPTIMIZE[optimize] is not None:
        dtype, quantize = OPTIMIZE[optimize]
        try:
            optimize_for_inference(lm, dtype=dtype, quantize=quantize)
        except ValueError as error:
            raise InputError(f"--optimize {optimize}: {error}") from error
    return lm


def load_int8(ref: str) -> WavSLM:
    """`WavSLM.from_pretrained(ref)` converted by `optimize_for_inference(quantize="int8")`, without the float32
    model ever in memory whole: LM and codec are built with their parameters on the meta device and filled
    from their `.safetensors` files part by part, each part converted before the next is read
    (`optimize.fill_converted`). The peak memory is about the converted model's plus one part's, and the
    model is the same. Weights in another format, or a codec of the first release (its keys are remapped),
    are read whole first."""
    resolved = hub.resolve(ref)
    config = from_dict(WavSLMConfig, hub.read_json(resolved.config), f"config '{resolved.config}'")
    if resolved.weights is None or resolved.weights.suffix != ".safetensors":
        return optimize_for_inference(WavSLM.from_pretrained(ref), quantize="int8")
    try:
        codec = _codec_int8(codec_target(config.codec_config, resolved))
    except InputError as error:
        raise InputError(f"cannot load the codec '{config.codec_config}' named by {resolved.config}: {error}") from error
    with parameters_on_meta():
        lm = WavSLM(config)
    fill_converted(lm, hub.LazyWeights(resolved.weights), LM_CONVERTED, Int8Linear)
    convert_lm(lm, Int8Linear)  # the head, and any map that straddled two parts
    own_tensors(lm)
    lm.attach_codec(codec)
    return lm.eval().requires_grad_(False)


def _codec_int8(ref) -> Codec:
    """The codec `ref` with its per-step parts in int8 (`load_int8`)."""
    resolved = hub.resolve(ref)
    config = from_dict(CodecConfig, hub.read_json(resolved.config), f"codec config '{resolved.config}'")
    weights = None
    if resolved.weights is not None and resolved.weights.suffix == ".safetensors":
        weights = hub.LazyWeights(resolved.weights)
    if weights is None or first_release(weights):
        codec = Codec.from_pretrained(ref)
    else:
        with parameters_on_meta():
            codec = Codec(config)
        fill_converted(codec, weights, CODEC_CONVERTED, Int8Linear)
    convert_codec(codec, Int8Linear)
    own_tensors(codec)
    return codec.eval().requires_grad_(False)
