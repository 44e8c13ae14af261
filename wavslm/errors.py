"""The one exception type users meet for bad input.

Every user-facing entry point checks its input and raises `InputError` with one sentence that names the
problem and the file. It subclasses `ValueError` so generic handlers keep working; the CLI turns it into
a one-line message and exit code 2. A failed read or write (a full disk, a read-only folder) stays an
`OSError` naming the user's file, never a temporary one; `describe_os_error` is its sentence (exit code 1).
"""

import errno


class InputError(ValueError):
    """Bad user input: unreadable audio, malformed config, missing weights, mismatched models."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM). A `BaseException`, like `KeyboardInterrupt`, so it passes every
    `except Exception` and only the `finally` blocks that remove half-written files run on its way out."""


def describe_os_error(error: OSError) -> str:
    """One sentence for a failed read or write: what happened, to which file (disk full, read-only, ...)."""
    name = error.filename if error.filename is not None else "a file"
    if error.errno == errno.ENOSPC:
        return f"the disk is full: cannot write '{name}' (free some space and run again)"
    if error.errno == errno.EROFS:
        return f"cannot write '{name}': it is on a read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: '{name}'"
    if error.errno == errno.EDQUOT:
        return f"the disk quota is exceeded: cannot write '{name}'"
    return f"{error.strerror or error}: '{name}'"
