"""What paper-scale work costs, counted on the real paper-size modules (random weights) with PyTorch's
FLOP counter: the figures of docs/scaling.md that no GPU measured.

    python bench/scaling.py [--gpu-tflops 989] [--mfu 0.4] [--hours 60000]

Counted: the LM's training FLOPs per token (forward and backward of 18 x 1024 layers over 512-token
crops, the codec's dequantization included), the codec encoder's FLOPs per second of audio (what
`wavslm tokenize` spends), parameters and checkpoint sizes. Estimated from them: GPU-hours at `--mfu`
of a GPU's dense bf16 peak (`--gpu-tflops`: 989 for an H100 SXM) for tokenizing `--hours` of audio and for
the paper's LM schedule (200k steps x 16 x 512 tokens). Estimates, not measurements: docs/scaling.md says
which is which.
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from wavslm.benchmark import build


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    parser.add_argument("--hours", type=float, default=60_000, help="audio to tokenize (Libri-Light: ~60k hours)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = build("paper")
    codec = lm.codec
    lm_params = sum(p.numel() for n, p in lm.named_parameters() if not n.startswith("codec."))
    codec_params = sum(p.numel() for p in codec.parameters())
    enc_params = sum(p.numel() for p in codec.encoder.parameters()) + sum(p.numel() for p in codec.compressor.parameters())
    rate = codec.sample_rate_input

    sig = torch.randn(1, 10 * rate) * 0.1
    with torch.inference_mode():
        encode_flops = count(lambda: codec.encode(sig)) / 10  # per second of audio

    toks = torch.randint(0, codec.vocab_size, (1, args.crop))
    lm.train()

    def step():
        with torch.no_grad():
            qfeats = codec.dequantize(toks)
        logits, _ = lm(qfeats, use_cache=False)
        logits.float().logsumexp(-1).mean().backward()

    train_flops = count(step) / args.crop  # per token, forward + backward
    peak = args.gpu_tflops * 1e12 * args.mfu
    tokens = args.steps * args.batch * args.crop
    audio_s = args.hours * 3600
    print(f"LM: {lm_params / 1e6:.1f} M parameters; training {train_flops / 1e9:.2f} GFLOP per token "
          f"(6 x parameters = {6 * lm_params / 1e9:.2f})")
    print(f"codec: {codec_params / 1e6:.1f} M parameters ({enc_params / 1e6:.1f} M in the encoder and compressor); "
          f"encoding {encode_flops / 1e9:.1f} GFLOP per second of audio")
    print(f"checkpoints (fp32 weights + AdamW's two moments): LM {lm_params * 12 / 2**30:.2f} GiB, "
          f"export {lm_params * 4 / 2**30:.2f} GiB")
    print(f"estimates at {args.mfu:.0%} of {args.gpu_tflops:.0f} TFLOP/s:")
    print(f"  tokenizing {args.hours:.0f} h: {encode_flops * audio_s / peak / 3600:.1f} GPU-hours of compute "
          f"({audio_s * codec.frame_rate / 1e9:.1f} G tokens)")
    print(f"  LM schedule {args.steps} steps x {args.batch} x {args.crop} tokens ({tokens / 1e9:.2f} G tokens): "
          f"{train_flops * tokens / peak / 3600:.1f} GPU-hours")


if __name__ == "__main__":
    main()
