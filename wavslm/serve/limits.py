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


@dataclass(frozen=True)
class Access:
    """Who may use the server. `hosts`: the `Host` header values it answers (None: any, e.g. behind a
    proxy that checks them); `token`: a secret every API request must carry (`?token=` or
    `Authorization: Bearer`), None for none. Pages of another origin are refused whatever these are."""

    hosts: tuple[str, ...] | None = None
    token: str | None = None

    @classmethod
    def loopback(cls, port: int, token: str | None = None) -> "Access":
        """This machine only: the names of the loopback interface at `port`."""
        return cls((f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"), token)
