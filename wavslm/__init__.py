"""wavslm: the WavSLM single-stream speech language model — run, train, stream, evaluate, serve."""

from .audio import load_audio, resample, save_audio
from .codec import Codec
from .errors import InputError
from .lm import WavSLM, WavSLMConfig

__version__ = "0.1.0"

__all__ = ["Codec", "InputError", "WavSLM", "WavSLMConfig", "load_audio", "resample", "save_audio", "__version__"]
