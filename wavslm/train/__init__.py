"""Training: one loop for every stage (ssl, codec, lm), single process or DDP under torchrun."""
