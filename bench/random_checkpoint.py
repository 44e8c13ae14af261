"""Save a WavSLM with random weights in the released layout, for `wavslm bench --model`.

    python bench/random_checkpoint.py [--size paper|tiny] -o DIR

Writes DIR/lm (config.json + model.safetensors, its codec named as ../codec) and DIR/codec: the weights
`wavslm bench --size SIZE` builds, as a file a loader reads. Run it in its own process: it holds the whole
float32 model, and `wavslm bench --model DIR/lm --quantize int8` then measures the memory of loading it.
"""

import argparse
import dataclasses
from pathlib import Path

from wavslm.benchmark import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["paper", "tiny"], default="paper")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    lm = build(args.size)
    lm.codec.save_pretrained(args.output / "codec")
    lm.config = dataclasses.replace(lm.config, codec_config="../codec")
    lm.save_pretrained(args.output / "lm")
    print(f"wrote {args.output / 'lm'} and {args.output / 'codec'} (random {args.size} weights)")


if __name__ == "__main__":
    main()
