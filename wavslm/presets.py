"""Model presets at the paper's sizes, as functions (random weights unless loaded)."""

from .codec import CodecConfig
from .lm import WavSLMConfig


def focalcodec_stream(codebook_size: int = 4096) -> CodecConfig:
    """A FocalCodec-Stream-shaped codec: WavLM-Large layers 1-6 (causal, 80 ms chunks), 3 focal blocks each
    way, one binary spherical codebook, WaveNeXt to 24 kHz. The module defaults are the released ones."""
    bits = codebook_size.bit_length() - 1
    window = {"causal": True, "window_size": 512}
    return CodecConfig(
        encoder_config={"num_layers": 6, "dim": 1024, "ffn_dim": 4096, "num_heads": 16, "lookahead_size": 3, **window},
        compressor_config={"input_dim": 1024, "output_dim": bits, **window},
        quantizer_config={"codebook_size": codebook_size},
        decompressor_config={"input_dim": bits, "output_dim": 1024, "last_window_size": 512, "lookahead_size": 3, **window},
        decoder_config={"input_dim": 1024, "hop_length": 480, "causal": True},
    )


def wavslm_paper(vocab_size: int = 4096, codec_config: str = "lucadellalib/focalcodec_50hz_4k_causal") -> WavSLMConfig:
    """The released `wavslm_4k` shape: WavLM-Large layers 7-24 (18 x 1024, 16 heads), window 512, lookahead 3."""
    return WavSLMConfig(vocab_size=vocab_size, codec_config=codec_config)
