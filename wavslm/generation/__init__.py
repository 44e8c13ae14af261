"""Generation: sampling, the loops that continue prompts, live sessions, and sessions stepped together.

    sampling   Sampling settings, `sample_next_token`, per-row seeded generators
    prompts    `prompt_tokens` (audio or tokens -> token rows) and the prompt read
    loops      `generate`, `stream`, `generate_steps`
    live       `LiveSession`: feed audio as it arrives, then continue it
    batch      `LiveBatch`: many single-row live sessions stepped together; `open_sessions`
"""

from .batch import LiveBatch, open_sessions
from .live import LiveSession
from .loops import generate, generate_steps, stream
from .prompts import prompt_tokens
from .sampling import Sampling, check_sampling, sample_next_token

__all__ = ["LiveBatch", "LiveSession", "Sampling", "check_sampling", "generate", "generate_steps", "open_sessions",
           "prompt_tokens", "sample_next_token", "stream"]
