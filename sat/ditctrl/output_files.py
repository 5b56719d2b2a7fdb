"""Output files that are never half-written, and output folders that one run at a time may use.

Every file goes through `write_file`: it is written under a hidden temporary name in its own folder,
checked (`verify`), flushed to disk and renamed into place, so a final name only ever holds a whole,
checked file. Inside an `OutputRun` (the entry scripts open one, see `errors.guarded`) the files of a
folder the run has `claim`ed are kept under their temporary names until the run ends: a run that
finishes renames them all into place (the `last` ones, e.g. params.yaml, after the rest); a run that
fails or is interrupted removes them, so every earlier output stays as it was.

A claimed folder carries a lock file (pid, host, start time of its run). A second run into the
folder is refused naming the first; a lock left by a killed run is reported as stale, never taken over.
Folders nest: a run is refused as well when a folder above or below one it claims carries another run's lock
(each run checks after taking its own lock, so of two runs starting together at least one sees the other).
The folders a run made are removed again, when empty, if it does not finish: a refused run leaves nothing.
This module imports nothing heavy, so the entry scripts can use it before torch is loaded.
"""
import contextlib
import fcntl
import json
import os
import signal
import socket
import time

LOCK_NAME = ".ditctrl.lock"
PARTIAL_TAG = ".partial-"  # in every temporary name: .<stem>.partial-<pid><ext>


class OutputWriteError(Exception):
    """A file could not be written or did not read back; the message is one line naming the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path


class FolderInUseError(ValueError):
    """An output folder is locked by another run, or by a run that was killed (a stale lock)."""


class OutputCheckError(Exception):
    """Raised by a `verify` function: the file written does not read back as expected."""


def temporary_path(path: str) -> str:
    """The hidden name `path` is written under before it is renamed into place (same folder, same extension)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    return os.path.join(folder, f".{stem}{PARTIAL_TAG}{os.getpid()}{extension}")


def first_line(error: BaseException) -> str:
    """The first line of an error's text, or its type's name when it has none (for one-line messages)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _reason(error: BaseException) -> str:
    """One line: the OS message of an OSError, else the first line of the error's text."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return first_line(error)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _sync_path(path: str, flags: int = os.O_RDONLY) -> None:
    """fsync a file or a folder (a folder's entry list after a rename)."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_into_place(temporary: str, path: str) -> None:
    os.replace(temporary, path)
    _sync_path(os.path.dirname(os.path.abspath(path)))


def write_file(path: str, write, verify=None, last: bool = False) -> str:
    """Write `path` safely with `write(temporary_path)`; `verify(temporary_path)` raises if the file is wrong.

    Returns `path`. Any failure removes the temporary file; OSErrors (full disk, permissions) and
    failed checks become one-line `OutputWriteError`s. Inside an `OutputRun` that claimed the
    file's folder the rename waits for the run's end (`last`: after the run's other files).
    """
    temporary = temporary_path(path)
    try:
        make_folders(os.path.dirname(temporary))
        write(temporary)
        if verify is not None:
            verify(temporary)
        _sync_path(temporary)
    except BaseException as error:
        _remove_quietly(temporary)
        if isinstance(error, (OSError, OutputCheckError)):
            raise OutputWriteError(path, _reason(error)) from error
        raise
    run = OutputRun.active
    if run is not None and run.holds(path):
        run.stage(temporary, path, last)
    else:
        try:
            _rename_into_place(temporary, path)
        except OSError as error:
            _remove_quietly(temporary)
            raise OutputWriteError(path, _reason(error)) from error
    return path


def write_bytes(path: str, data: bytes, last: bool = False) -> str:
    """`write_file` of raw bytes."""
    def write(temporary):
        with open(temporary, "wb") as file:
            file.write(data)

    return write_file(path, write, last=last)


def write_text(path: str, text: str, last: bool = False) -> str:
    return write_bytes(path, text.encode("utf-8"), last)


def _lock_owner(lock_path: str) -> dict:
    try:
        with open(lock_path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return {}


def _is_held(lock_path: str) -> bool:
    """Whether a living process holds the lock file's flock (the kernel drops it when its process dies)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _inside(folder: str, path: str) -> bool:
    """Whether `path` is `folder` or lies inside it (both absolute)."""
    return os.path.commonpath([folder, path]) == folder


def _refusal(key: str, folder: str, lock_path: str) -> str:
    """Why `folder` (the run's `key`, e.g. args.output_dir) cannot be used: the lock at `lock_path` (in the folder,
    above or below it) is another run's, a stale one, or one of another machine."""
    locked = os.path.dirname(lock_path)
    subject = f"{key} {folder}"
    if locked != folder:
        subject += f" {'lies inside' if _inside(locked, folder) else 'holds'} {locked}, which"
    owner = _lock_owner(lock_path)
    who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"
    if _is_held(lock_path):
        return f"{subject} is in use by another run ({who}); wait for it or choose another {key}"
    if owner.get("host") not in (None, socket.gethostname()):
        return f"{subject} is locked by a run on another machine ({who}); if no run uses it, delete {lock_path}"
    return (f"{subject} has a stale lock of a run that did not finish ({who}); if no run uses it, "
            f"delete {lock_path} (and any .*{PARTIAL_TAG}* files there) and run again")


def locks_around(folder: str) -> list:
    """The lock files in the folders above `folder` (absolute) and in the folders below it, not its own."""
    above = [os.path.join(parent, LOCK_NAME) for parent in _parents(folder)]
    below = [os.path.join(root, LOCK_NAME) for root, _, files in os.walk(folder) if LOCK_NAME in files and root != folder]
    return [path for path in above if os.path.isfile(path)] + sorted(below)


def _ancestor_pids() -> set:
    """The process ids of this process's parent, its parent, and so on (Linux's /proc; else the parent alone)."""
    ancestors, pid = set(), os.getppid()
    while pid > 1 and pid not in ancestors:
        ancestors.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as file:
                pid = int(file.read().rsplit(")", 1)[1].split()[1])  # the field after the command name's ')'
        except (OSError, ValueError, IndexError):
            break
    return ancestors


def _held_by_our_job(lock_path: str, folder: str) -> bool:
    """Whether the lock at `lock_path`, in a folder above `folder`, is held by a process that started this one (a
    batch run writing each case into a folder of its own below its results), so it guards the same job."""
    owner = _lock_owner(lock_path)
    return (os.path.dirname(lock_path) != folder and _inside(os.path.dirname(lock_path), folder)
            and owner.get("host") == socket.gethostname() and owner.get("pid") in _ancestor_pids()
            and _is_held(lock_path))


def _parents(folder: str) -> list:
    parents = []
    while (parent := os.path.dirname(folder)) != folder:
        parents.append(parent)
        folder = parent
    return parents


def make_folders(folder: str) -> None:
    """`os.makedirs(folder, exist_ok=True)`; inside an `OutputRun` the folders made are recorded, so that the run
    removes them again (when empty) if it does not finish."""
    folder = os.path.abspath(folder)
    missing = [path for path in [folder, *_parents(folder)] if not os.path.isdir(path)]
    os.makedirs(folder, exist_ok=True)
    if OutputRun.active is not None:
        OutputRun.active.made += reversed(missing)


def lock_folder(folder: str, key: str = "args.output_dir") -> int:
    """Create `folder/.ditctrl.lock` naming this process and hold its flock; return its descriptor.

    The lock file is written in full under a temporary name and hard-linked into place, so another
    run never sees it half-written. Raises FolderInUseError (naming the folder as the run's `key`) when the
    folder is already locked.
    """
    lock_path = os.path.join(folder, LOCK_NAME)
    temporary = temporary_path(lock_path)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)
        os.link(temporary, lock_path)
    except FileExistsError:
        os.close(fd)
        raise FolderInUseError(_refusal(key, os.path.abspath(folder), lock_path)) from None
    except BaseException:
        os.close(fd)
        raise
    finally:
        _remove_quietly(temporary)
    return fd


def unlock_folder(folder: str, fd: int) -> None:
    """Remove the lock file `lock_folder` made (only if it is still that file) and drop the flock."""
    lock_path = os.path.join(folder, LOCK_NAME)
    try:
        if os.path.samestat(os.stat(lock_path), os.fstat(fd)):
            os.remove(lock_path)
    except OSError:
        pass
    os.close(fd)


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM back for the block (main thread only), then raise them again."""
    pending = []
    try:
        previous = {number: signal.signal(number, lambda received, frame: pending.append(received))
                    for number in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals go to the main thread anyway
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in pending:
            signal.raise_signal(number)


class OutputRun:
    """The outputs of one run: its locked folders and the finished files waiting to be renamed into place.

    Use as a context manager (one at a time). Leaving it normally renames every staged file into
    place; leaving it by an exception (KeyboardInterrupt included) removes them. Either way the
    locks are released.
    """

    active = None  # the OutputRun entered now, if any

    def __init__(self):
        self.locks = {}  # absolute folder -> lock descriptor
        self.staged = {}  # final path -> (temporary path, last)
        self.made = []  # the folders this run made, outermost first
        self.committed = False  # every staged file renamed into place

    def __enter__(self):
        if OutputRun.active is not None:
            raise RuntimeError("an OutputRun is already active")
        OutputRun.active = self
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.commit()
            else:
                self.discard()
        finally:
            for folder, fd in self.locks.items():
                unlock_folder(folder, fd)
            self.locks.clear()
            if not self.committed:
                self._remove_made_folders()
            OutputRun.active = None
        return False

    def claim(self, folder: str, key: str = "args.output_dir") -> None:
        """Lock `folder` (which must exist; `key` names it in errors) for this run; its files are staged until the
        run ends. Another run's lock in a folder above or below it refuses the folder (FolderInUseError)."""
        folder = os.path.abspath(folder)
        if not self.holds(os.path.join(folder, LOCK_NAME)):
            with _signals_deferred():  # a lock taken is a lock recorded, so it is always released
                self.locks[folder] = lock_folder(folder, key)
            for lock_path in locks_around(folder):
                if os.path.dirname(lock_path) not in self.locks and not _held_by_our_job(lock_path, folder):
                    raise FolderInUseError(_refusal(key, folder, lock_path))

    def files_left_as_they_were(self) -> list:
        """Every file in the run's folders that the run does not write (hidden ones, e.g. locks, aside): what
        earlier runs left there."""
        found = set()
        for folder in self.locks:
            for root, _, files in os.walk(folder):
                found.update(os.path.join(root, name) for name in files if not name.startswith("."))
        return sorted(found - set(self.staged))

    def _remove_made_folders(self) -> None:
        for folder in reversed(self.made):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (another process wrote there) or gone: leave it
                pass
        self.made.clear()

    def holds(self, path: str) -> bool:
        path = os.path.abspath(path)
        return any(os.path.commonpath([folder, path]) == folder for folder in self.locks)

    def stage(self, temporary: str, path: str, last: bool) -> None:
        path = os.path.abspath(path)
        if path in self.staged and self.staged[path][0] != temporary:
            _remove_quietly(self.staged[path][0])
        self.staged[path] = (temporary, last)

    def commit(self) -> None:
        """Rename every staged file into place, the `last` ones after the rest; SIGINT/SIGTERM wait until done."""
        order = sorted(self.staged.items(), key=lambda item: item[1][1])
        try:
            with _signals_deferred():
                for path, (temporary, _) in order:
                    try:
                        _rename_into_place(temporary, path)
                    except OSError as error:
                        raise OutputWriteError(path, _reason(error)) from error
                    del self.staged[path]
                self.committed = True
        finally:
            self.discard()

    def discard(self) -> None:
        for temporary, _ in self.staged.values():
            _remove_quietly(temporary)
        self.staged.clear()
