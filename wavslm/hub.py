"""Resolve model references, read and write `config.json` + `model.safetensors`. The only network user.

A reference is one of:
- a folder holding `config.json` and `model.safetensors` (the released layout);
- a `X.json` file beside `X.safetensors` (also accepted without the `.json` suffix);
- a Hugging Face Hub id `owner/name` (or `owner/name/X.json`), downloaded with `huggingface_hub`.

Evaluation datasets given as a Hub id (`speed/sWUGGY`, `slprl/SALMon`) are resolved here too
(`dataset_folder`): their parquet files, downloaded or taken from the local cache.

Weights are `model.safetensors` (or `X.safetensors`). Where a repository or folder offers only a pickled
`model.pt` / `pytorch_model.bin` (the original loaders fall back to it), it is read with
`torch.load(weights_only=True)`, PyTorch's loader that admits tensors and plain containers only, and a
warning says so once; a pickle that needs anything more is refused.
"""

import json
import logging
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import InputError
from .io import write_file, write_json

log = logging.getLogger("wavslm.hub")
_HUB_ID = re.compile(r"[\w\-.]+/[\w\-.]+(/[\w\-./]+\.json)?")

@dataclass(frozen=True)
class Resolved:
    """Local paths of a model reference: its config, its weights (None if absent) and its folder."""

    ref: str
    config: Path
    weights: Path | None

    @property
    def folder(self) -> Path:
        return self.config.parent


def resolve(ref: str | os.PathLike) -> Resolved:
    """Find (or download) the config and weights of `ref`; raise `InputError` in one sentence if absent."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise InputError(f"model folder '{text}' has no config.json")
    elif path.suffix == ".json" and path.is_file():
        config = path
    elif path.with_name(path.name + ".json").is_file():
        config = path.with_name(path.name + ".json")
    elif _HUB_ID.fullmatch(text) and not path.exists() and not text.startswith((".", "/", "~")):
        return _download(text)
    else:
        raise InputError(f"model '{text}' not found: not a folder, a .json file, or a Hugging Face Hub id")
    return Resolved(text, config, _local_weights(config))


def _local_weights(config: Path) -> Path | None:
    for name in _weight_names(config.name):
        if (config.parent / name).is_file():
            return config.parent / name
    return None


def _download(ref: str) -> Resolved:
    parts = ref.split("/")
    repo_id, config_name = "/".join(parts[:2]), "/".join(parts[2:]) or "config.json"
    config = _hub_file(ref, repo_id, config_name)
    if config is None:
        raise InputError(f"the Hugging Face Hub repository '{repo_id}' has no {config_name}")
    weights = None
    for name in _weight_names(config_name):
        weights = _hub_file(ref, repo_id, name)
        if weights is not None:
            break
    return Resolved(ref, config, weights)


def _hub_file(ref: str, repo_id: str, filename: str) -> Path | None:
    """Download one file (or take it from the local cache); None if the repository lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id, filename))
    except RemoteEntryNotFoundError:
        return None
    except RepositoryNotFoundError as error:
        raise InputError(f"model '{ref}' not found on the Hugging Face Hub (or it is private or gated)") from error
    except LocalEntryNotFoundError as error:
        raise InputError(
            f"cannot download model '{ref}': the Hugging Face Hub is unreachable (offline?) and it is not cached"
        ) from error
    except Exception as error:  # proxies, DNS, timeouts: all the same to the user
        raise InputError(f"cannot download model '{ref}' from the Hugging Face Hub: {error}") from error


_DATASET_ID = re.compile(r"[\w\-.]+/[\w\-.]+")


def is_dataset_id(ref: str | os.PathLike) -> bool:
    """Whether `ref` reads as a Hub dataset id (`owner/name`) rather than a local path that exists."""
    text = str(ref)
    return not Path(text).expanduser().exists() and _DATASET_ID.fullmatch(text) is not None


def dataset_folder(repo_id: str, revision: str | None = None, ignore: list[str] | None = None) -> Path:
    """The local snapshot of Hub dataset `repo_id`'s parquet files and card (less the `ignore` patterns):
    downloaded when the Hub can be reached, else taken from the local Hugging Face cache (`HF_HUB_CACHE`);
    one sentence if neither.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.parquet", "**/*.parquet", "README.md"]
    try:
        folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                        ignore_patterns=ignore))
    except GatedRepoError as error:
        raise InputError(f"dataset '{repo_id}' is gated on the Hugging Face Hub: accept its terms and log in "
                         "(`hf auth login`) first") from error
    except RepositoryNotFoundError as error:
        raise InputError(f"dataset '{repo_id}' is neither a local path nor a dataset on the Hugging Face Hub "
                         "(or it is private)") from error
    except LocalEntryNotFoundError as error:
        raise InputError(
            f"dataset '{repo_id}' is neither a local path nor in the local Hugging Face cache "
            f"('{constants.HF_HUB_CACHE}'), and the Hub cannot be reached (offline?) to download it"
        ) from error
    except Exception as error:  # proxies, DNS, timeouts: all the same to the user
        raise InputError(f"cannot download dataset '{repo_id}' from the Hugging Face Hub: {error}") from error
    if not any(folder.rglob("*.parquet")):
        raise InputError(f"dataset '{repo_id}' has no parquet files (in '{folder}'); only parquet datasets are read")
    return folder


def _weight_names(config_name: str) -> list[str]:
    """Weight files that may sit beside a config, safest first."""
    stem = "model" if config_name.endswith("config.json") else config_name[: -len(".json")]
    return [stem + ".safetensors", stem + ".pt"] + (["pytorch_model.bin"] if stem == "model" else [])


_warned: set[Path] = set()


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, naming the file in any error."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read config '{path}': {error}") from error
    except json.JSONDecodeError as error:
        raise InputError(f"config '{path}' is not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(value, dict):
        raise InputError(f"config '{path}' must hold a JSON object, not {type(value).__name__}")
    return value


def load_weights(path: Path) -> dict[str, Tensor]:
    """Read a state dict from `.safetensors` (or `.pt` / `.bin` with `weights_only=True`, saying so once)."""
    path = Path(path)
    try:
        if path.suffix in (".pt", ".bin"):
            if path not in _warned:
                _warned.add(path)
                log.warning("reading pickled weights '%s' with torch.load(weights_only=True): tensors and plain "
                            "containers only; save them as model.safetensors to skip this step", path)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as error:
                if "Unsupported global" in str(error):  # a pickle that would build objects besides tensors
                    raise InputError(f"weights '{path}' hold Python objects besides tensors; refusing to unpickle "
                                     "them") from error
                raise InputError(f"cannot read weights '{path}': the file is corrupt or not a checkpoint") from error
            if not isinstance(state, dict):
                raise InputError(f"weights '{path}' hold a {type(state).__name__}, not a state dict of tensors")
            return state.get("model", state)
        return load_file(path)
    except InputError:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as error:
        raise InputError(f"cannot read weights '{path}': the file is corrupt or not a checkpoint") from error


class LazyWeights(Mapping):
    """The tensors of a `.safetensors` file, each read when it is asked for.

    A tensor given out lies in the file's read-only memory map (only what is touched is read), and dropping
    it drops its pages: a model can be filled and converted part by part without its whole state in memory
    (copy what is kept: `optimize.own_tensors`). `shapes` come from the file's header, without reading any
    tensor.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with safe_open(self.path, "pt") as f:
                self.shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, RuntimeError, ValueError) as error:
            raise InputError(f"cannot read weights '{self.path}': the file is corrupt or not a checkpoint") from error

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        with safe_open(self.path, "pt") as f:
            return f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def check_fit(own: Mapping[str, tuple], theirs: Mapping[str, tuple], source: str | os.PathLike) -> None:
    """One readable sentence if the state-dict shapes `theirs` (a checkpoint's) miss, add or misshape keys of `own`."""
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = [k for k in set(own) & set(theirs) if tuple(own[k]) != tuple(theirs[k])]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if shapes:
        k = sorted(shapes)[0]
        problems.append(f"shape mismatch for {k}: checkpoint {tuple(theirs[k])}, model {tuple(own[k])}")
    if problems:
        raise InputError(f"weights '{source}' do not fit the model: {'; '.join(problems)}")


def check_finite(state: Mapping[str, Tensor], source: str | os.PathLike) -> None:
    """One sentence if a floating-point tensor of `state` holds NaN or infinite values.

    Checked at loading, not deep in sampling. A sum is NaN or infinite when an element is (about 0.05 s per
    GB, against 1.5 s for an element-wise test); only then is the tensor tested element by element.
    """
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v.sum()))
                    and not bool(torch.isfinite(v).all()))
    if broken:
        raise InputError(f"weights '{source}' hold NaN or infinite values (in {_few(broken)}): the file is damaged "
                         "or the run that wrote it diverged")


def load_state(module: torch.nn.Module, state: dict[str, Tensor], source: str | os.PathLike) -> None:
    """`load_state_dict(strict=True)` with one readable sentence on missing, unexpected or misshaped keys."""
    check_fit({k: v.shape for k, v in module.state_dict().items()}, {k: v.shape for k, v in state.items()}, source)
    check_finite(state, source)
    module.load_state_dict(state)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def save_folder(folder: str | os.PathLike, config: dict[str, Any], state: dict[str, Tensor]) -> Path:
    """Write `config.json` and `model.safetensors` into `folder`, each via a temporary file and a rename."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    write_file(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(folder / "config.json", config)
    return folder
