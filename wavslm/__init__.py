"""wavslm: the WavSLM single-stream speech language model — run, train, stream, evaluate, serve."""

__version__ = "0.1.0"
