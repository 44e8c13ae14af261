"""Per-server limits of `wavslm serve`: plain data, every one a command-line flag."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    """Per-server limits; every one is a `wavslm serve` flag."""

    max_prompt_secs: float = 30.0
    max_gen_secs: float = 30.0
    max_upload_bytes: int = 16 * 2**20
    max_sessions: int = 4
    idle_timeout: float = 30.0  # seconds without a client message while the prompt is being sent
    session_timeout: float = 300.0  # seconds from connection to the last chunk

    def as_dict(self) -> dict:
        return asdict(self)
