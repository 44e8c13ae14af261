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

from .codec import Codec
from .errors import InputError
from .lm import WavSLM
from .optimize import optimize_for_inference


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
    lm = WavSLM.from_pretrained(ref or _bundled(BUNDLED_LM, "model")).to(device)
    if OPTIMIZE[optimize] is not None:
        dtype, quantize = OPTIMIZE[optimize]
        try:
            optimize_for_inference(lm, dtype=dtype, quantize=quantize)
        except ValueError as error:
            raise InputError(f"--optimize {optimize}: {error}") from error
    return lm
