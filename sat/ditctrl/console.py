"""Every line a user reads (notes, `wrote …`, errors) goes through `say`, which never costs a run its work.

A character the stream's encoding cannot show (a non-ASCII folder name with `PYTHONIOENCODING=ascii` or a C
locale) is written as an escape (`\\xe9`) instead of failing. A stream that cannot be written at all (a full
device, a closed pipe) is pointed at /dev/null for the rest of the process, so neither this line, nor a later one,
nor Python's flush at exit fails: the run's files matter more than its messages.
Imports nothing heavy.
"""
import os
import sys


def say(text: str, file=None) -> None:
    """Write `text` and a newline to `file` (stdout by default) and flush it; see the module docstring."""
    stream = sys.stdout if file is None else file
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")
        stream.flush()
    except (OSError, ValueError):  # ValueError: a closed stream
        _discard(stream)


def _discard(stream) -> None:
    """Send the stream's file descriptor to /dev/null, so its buffered text and later writes succeed unseen."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)
        stream.flush()
    except (OSError, ValueError):  # a stream without a descriptor (e.g. captured by a test): nothing more to do
        pass
