"""Evaluation: zero-shot pair scoring and its dataset loaders, codec and generation metrics, synthetic benchmarks."""
