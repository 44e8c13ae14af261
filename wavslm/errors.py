"""The one exception type users meet for bad input.

Every user-facing entry point checks its input and raises `InputError` with one sentence that names the
problem and the file. It subclasses `ValueError` so generic handlers keep working; the CLI turns it into
a one-line message and exit code 2.
"""


class InputError(ValueError):
    """Bad user input: unreadable audio, malformed config, missing weights, mismatched models."""
