"""Where a run writes: locked, writable output folders, temporary files no other process touches, and
errors that say which folder is the problem (issue 17, items 1-3).

- A run directory and a checkpoint directory are each held by one process at a time through a lock
  file in them (`.rlgeom.lock`, the `filelock` library: an OS lock, released when the process ends,
  however it ends). A second writer gets `DirectoryInUseError`, or for a new run its own fresh directory.
  Locks are re-entrant within a process (a loaded checkpoint continuing in the same process is fine).
- Folders are created and probed (a real file is created and removed: permission bits say nothing
  to root, nor about a read-only mount) before training, so a bad --logdir / --checkpoint-dir fails
  at once, not at the first checkpoint.
- A failed write (ENOSPC, a folder made read-only meanwhile) removes its partial temporary file and
  raises `OutputWriteError` (`DiskFullError` for a full disk); whatever was written before stays.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
import uuid

LOCK_NAME = ".rlgeom.lock"


class OutputError(ValueError):
    """An output folder or file that cannot be used: not creatable, not writable, or held by another process."""


class DirectoryInUseError(OutputError):
    """Another process writes to this run or checkpoint directory."""


class OutputWriteError(OSError):
    """A write that failed part-way (its temporary file removed, earlier files kept)."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


class DiskFullError(OutputWriteError):
    """No space left on the device (ENOSPC) or over quota (EDQUOT)."""


def temp_name(path: str) -> str:
    """A temporary name next to `path`, unique to this process and call (pid + random), so no two
    writers, even after pid reuse, ever share or delete each other's temporary file."""
    return f"{path}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_atomically(path: str, data: bytes) -> str:
    """Write `data` to `path` through a temporary file (fsync, rename): `path` is either the old file
    or the complete new one. On failure the temporary is removed and OutputWriteError says why."""
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise write_error(path, err) from None
    return path


def write_error(path: str, err: OSError,
                kept: str = "the partial file was removed and every file written before is kept") -> OutputWriteError:
    """The error for a failed write of `path`: a full disk says so and what to do."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(err.errno, f"no space left to write {path} ({err.strerror}); {kept}: free some space, "
                             "then resume (python -m rlgeom.train ... --resume latest)")
    return OutputWriteError(err.errno, f"cannot write {path}: {err.strerror or err}; {kept}")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def ensure_writable_dir(path: str, what: str) -> str:
    """Create `path` (and parents) and prove it writable by creating and removing a file in it."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rlgeom-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OutputError(f"the {what} {path} cannot be written: {_reason(err)}; choose a writable folder") from None
    return path


def check_writable_file(path: str, what: str) -> str:
    """A file that training will write at its end (--save): its folder must be writable now and the
    path must not be a folder, so the trained model is never lost to a typo. Creates nothing but the folder."""
    if os.path.isdir(path):
        raise OutputError(f"the {what} {path} is a folder; give a file name (e.g. {os.path.join(path, 'model')})")
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)), f"folder of the {what}")
    return path


def _reason(err: OSError) -> str:
    if err.errno in (errno.ENOTDIR, errno.EEXIST):  # makedirs through a file, or onto one
        return "a part of the path is a file, not a folder"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EROFS:
        return "the file system is read-only"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    return err.strerror or str(err)


# ----------------------------------------------------------------------------- locks
def _lock(directory: str):
    from filelock import FileLock

    # is_singleton: one lock object per file in this process, so taking it again here is re-entrant
    return FileLock(os.path.join(directory, LOCK_NAME), timeout=0, is_singleton=True, thread_local=False)


def lock_directory(directory: str, what: str):
    """Create, probe and lock `directory` for this process; DirectoryInUseError if another holds it.
    Returns the held lock (release() it once, when done writing there)."""
    from filelock import Timeout

    ensure_writable_dir(directory, what)
    lock = _lock(directory)
    try:
        lock.acquire()
    except Timeout:
        raise DirectoryInUseError(
            f"the {what} {directory} is in use by another process (it holds {LOCK_NAME} there); wait for it to "
            "finish, or write elsewhere (another --logdir / --checkpoint-dir)") from None
    except OSError as err:
        raise OutputError(f"the {what} {directory} cannot be locked: {_reason(err)}") from None
    return lock


def try_lock_fresh_directory(directory: str):
    """The lock of `directory` if it is new or empty (but for a lock file) and no process holds it, else None:
    how a new run claims its own run directory even when several start at the same moment."""
    from filelock import Timeout

    if os.path.exists(directory) and (not os.path.isdir(directory) or set(os.listdir(directory)) - {LOCK_NAME}):
        return None
    lock = _lock(directory)
    if lock.is_locked:  # held by this process already: another run of this process
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        lock.acquire()
    except Timeout:
        return None
    except OSError as err:
        raise OutputError(f"the run directory {directory} cannot be written: {_reason(err)}; choose a writable "
                          "--logdir (tensorboard_log)") from None
    if set(os.listdir(directory)) - {LOCK_NAME}:  # another process wrote there and finished meanwhile
        lock.release()
        return None
    return lock


def remove_stale_temps(directory: str, pattern: str) -> list[str]:
    """Remove temporary files matching `pattern` in `directory`, which the caller holds locked: any such
    file is a leftover of a killed process (no live rlgeom process writes there). Returns what was removed."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(directory), pattern)):
        try:
            os.remove(tmp)
            removed.append(tmp)
        except OSError:
            pass
    return removed


__all__ = [
    "LOCK_NAME", "OutputError", "DirectoryInUseError", "OutputWriteError", "DiskFullError", "temp_name",
    "write_atomically", "write_error", "ensure_writable_dir", "check_writable_file", "lock_directory",
    "try_lock_fresh_directory", "remove_stale_temps",
]
