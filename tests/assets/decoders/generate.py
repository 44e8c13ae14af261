"""Write the decoder goldens in this folder from a checkout of the original FocalCodec modules.

    python tests/assets/decoders/generate.py /path/to/focalcodec/focalcodec

For each of Vocos and WaveNeXt, causal and not, a tiny decoder is built by the original code, its weights are
drawn from N(0, 0.3^2) with a fixed seed, and the original forward pass is run on fixed random features. Each
file holds the weights (the original state dict, names unchanged), `qfeats` (2, 11, 12) and the original
output `sig`; the constructor arguments are in the file's metadata under "config". The test reloads these
tensors into this project's modules, so it needs no checkout of the original to run.
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "vocos": {"input_dim": 12, "num_layers": 2, "dim": 16, "ffn_dim": 24, "kernel_size": 5,
              "layerscale_init": None, "n_fft": 40, "hop_length": 13},
    "wavenext": {"input_dim": 12, "num_layers": 2, "dim": 16, "ffn_dim": 24, "kernel_size": 7, "hop_length": 30},
}
CLASSES = {"vocos": "Vocos", "wavenext": "WaveNeXt"}


def load_module(src: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"original_{name}", src / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def main(src: Path) -> None:
    for name, config in CONFIGS.items():
        original_cls = getattr(load_module(src, name), CLASSES[name])
        for causal in (True, False):
            torch.manual_seed(0)
            kwargs = {**config, "causal": causal}
            model = original_cls(**kwargs).eval()
            for p in model.parameters():
                p.normal_(0.0, 0.3)
            qfeats = torch.randn(2, 11, config["input_dim"])
            sig, _ = model(qfeats)
            tensors = {f"weights.{k}": v.contiguous() for k, v in model.state_dict().items()}
            tensors.update(qfeats=qfeats, sig=sig.contiguous())
            out = HERE / f"{name}_{'causal' if causal else 'noncausal'}.safetensors"
            save_file(tensors, out, metadata={"config": json.dumps(kwargs)})
            print(out.name, tuple(sig.shape))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
