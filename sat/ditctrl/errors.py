"""The top level of every entry script: whatever happens, the user sees one line, never a traceback.

`guarded(main, *args)` runs `main` inside an `OutputRun` (so its outputs are renamed into place only
when it finishes) and turns what escapes into one line on stderr and an exit status:

* bad input already reported by the script (`SystemExit`): passed on (status 2);
* a file that cannot be written (full disk, permissions): `error: cannot write …`, status 1;
* the GPU's memory exhausted: `error: out of GPU memory (…)` with what frees memory, status 1;
* Ctrl-C or SIGTERM: `interrupted: …`, status 130 / 143;
* anything else is an internal error: one line saying so and where the full traceback was written, status 1.

With several ranks (distributed.py) a failure on any rank reaches this function on the lowest failing rank
alone; the others end silently with its status (`distributed.Ranks.together`), so the job prints one line.

Imports nothing heavy, so it can wrap the entry scripts' own imports.
"""
import os
import signal
import sys
import tempfile
import time
import traceback

from .console import say
from .output_files import OutputRun, OutputWriteError, first_line

INTERRUPTED_NOTE = "no output of this run was kept; earlier outputs are unchanged"
OUT_OF_MEMORY_HINT = ("args.offload=True keeps the VAE on the CPU while sampling and the DiT there while decoding; "
                      "docs/performance.md, 'What fits which GPU'")
COMMITTED_NOTE = "after this run's outputs were all written"
USER_ERRORS = (ValueError, FileNotFoundError)  # bad input (MissingCheckpointError is a FileNotFoundError): status 2


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (like KeyboardInterrupt for SIGINT)."""


def _raise_terminated(signum, frame):
    raise Terminated


def write_internal_log(error: BaseException) -> str:
    """Write the full traceback of `error` to a new log file in the temporary folder; return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"ditctrl-error-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as log:
        log.write(f"command: {' '.join(sys.argv)}\n")
        log.write("".join(traceback.format_exception(error)))
    return path


def exit_status(error: BaseException) -> int:
    """The status a run ended by `error` (an Exception or SystemExit) exits with: see the module docstring."""
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 0 if error.code is None else 1
    return 2 if isinstance(error, USER_ERRORS) else 1


def _one_line(error: BaseException) -> str:
    """`Type: first line of its text`, or the type alone for an error without text."""
    return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__


def _is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never imported here: an error of torch's means torch is loaded
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def _stop(message: str, status: int):
    say(message, file=sys.stderr)
    sys.exit(status)


def guarded(main, *args) -> None:
    """Run `main(*args)` as an entry script's whole body; see the module docstring for what the user sees."""
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    run = OutputRun()
    try:
        with run:
            main(*args)
    except SystemExit:
        raise
    except (KeyboardInterrupt, Terminated) as stop:
        # a signal that arrives while the outputs are renamed into place waits until they all are
        note = COMMITTED_NOTE if run.committed else INTERRUPTED_NOTE
        if isinstance(stop, KeyboardInterrupt):
            _stop(f"interrupted: {note}", 130)
        _stop(f"terminated: {note}", 143)
    except OutputWriteError as error:
        _stop(f"error: {error}; {INTERRUPTED_NOTE}", 1)
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line instead of a traceback
        if _is_out_of_memory(error):
            _stop(f"error: out of GPU memory ({first_line(error)}); {OUT_OF_MEMORY_HINT}; {INTERRUPTED_NOTE}", 1)
        try:
            where = f"full log: {write_internal_log(error)}"
        except OSError as log_error:
            where = f"the log could not be written ({log_error.strerror})"
        _stop(f"error: internal error ({_one_line(error)}); {where}", 1)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
