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
- Whose folder (issue 30): a run writes only into folders it created or that hold its own files, never
  inside another run's directory (one with run.json; symlinks resolved); a temporary name never passes
  NAME_MAX, and the temporaries of writers killed mid-save are removed by the next save to that path.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
import uuid

LOCK_NAME = ".rlgeom.lock"
#: the file that marks a run directory (rlgeom.persistence.logger.RunLogger.write_run_info, the grid's SB3 runs)
RUN_INFO = "run.json"
#: the longest file name (in bytes) of Linux's file systems (ext4, xfs, btrfs, tmpfs)
NAME_MAX = 255


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


#: this host, in temporary names: a writer's pid says whether it is alive only on its own host
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
#: `.tmp<pid>-<random>-<host>` after the target's name (a pid has at most 7 digits: Linux's pid_max is 2**22)
_TEMP_SUFFIX = re.compile(r"\.tmp(\d+)-[0-9a-f]{8}-([0-9a-f]{6})")
_TEMP_SUFFIX_MAX = len(".tmp") + 7 + 1 + 8 + 1 + 6


def _temp_stem(path: str) -> str:
    """`path` itself, or, where a temporary suffix would take its name past NAME_MAX, the name cut short and
    followed by a hash of the whole name (so every legal name can be written, and each keeps its own stem)."""
    folder, name = os.path.split(path)
    if len(name.encode()) + _TEMP_SUFFIX_MAX <= NAME_MAX:
        return path
    cut = name.encode()[: NAME_MAX - _TEMP_SUFFIX_MAX - 9].decode(errors="ignore")
    return os.path.join(folder, f"{cut}~{hashlib.sha256(name.encode()).hexdigest()[:8]}")


def temp_name(path: str) -> str:
    """A temporary name next to `path`, unique to this process and call (pid + random) and naming its host, so
    no two writers, even after pid reuse, ever share or delete each other's temporary file; never longer than
    NAME_MAX, whatever the length of `path`'s name."""
    return f"{_temp_stem(path)}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}-{_HOST_TAG}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's live process; a pid past the kernel's range
        return True
    return True


def remove_dead_writers_temps(path: str) -> list[str]:
    """The temporaries of `path` that writers on this host left when they were killed (kill -9 during a save):
    removed when their pid no longer runs. A live process's temporary, or one from another host (a shared
    folder), is never touched. Returns what was removed."""
    stem = _temp_stem(path)

    def dead_writers(tmp: str) -> bool:
        m = _TEMP_SUFFIX.fullmatch(tmp[len(stem):])
        return m is not None and m.group(2) == _HOST_TAG and not _pid_alive(int(m.group(1)))

    return _remove_files(filter(dead_writers, glob.glob(glob.escape(stem) + ".tmp*")))


def _remove_files(paths) -> list[str]:
    """Remove each path; one that is already gone (or cannot be removed) is skipped. Returns what was removed."""
    removed = []
    for tmp in paths:
        try:
            os.remove(tmp)
            removed.append(tmp)
        except OSError:
            pass
    return removed


def write_atomically(path: str, data: bytes, resume_from: str | None = None) -> str:
    """Write `data` to `path` through a temporary file (fsync, rename): `path` is either the old file
    or the complete new one. On failure the temporary is removed and OutputWriteError says why (a full disk:
    what to do, resuming from `resume_from` where that folder holds checkpoints). Temporaries that killed
    writers of `path` left are removed first."""
    remove_dead_writers_temps(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise write_error(path, err, resume_from=resume_from) from None
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): no temporary is left behind either
        _remove_quietly(tmp)
        raise
    return path


def write_error(path: str, err: OSError, kept: str = "the partial file was removed and every file written before is kept",
                resume_from: str | None = None) -> OutputWriteError:
    """The error for a failed write of `path`: a full disk says so and what to do; resuming is suggested only
    with `resume_from`, a folder that holds checkpoints to resume from."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        then = (f"free some space, then resume from the checkpoints in {resume_from} (python -m rlgeom.train ... "
                f"--resume {resume_from})" if resume_from else "free some space and try again")
        return DiskFullError(err.errno, f"no space left to write {path} ({err.strerror}); {kept}: {then}")
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
    if len(os.path.basename(path).encode()) > NAME_MAX:
        raise OutputError(f"the {what} {path} has a name of {len(os.path.basename(path).encode())} bytes; file names "
                          f"take at most {NAME_MAX}: choose a shorter one")
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


# ----------------------------------------------------------------------------- whose folder
def enclosing_run_dir(path) -> str | None:
    """The run directory that holds `path` (`path` itself or its nearest ancestor whose run.json names a run:
    a JSON object with algo and env_id, as rlgeom and its grid write it), symlinks resolved; None when no run
    directory holds it (another tool's run.json does not count)."""
    current = os.path.realpath(os.fspath(path))
    while True:
        if _run_info(current) is not None:
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _run_info(folder: str) -> dict | None:
    path = os.path.join(folder, RUN_INFO)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"algo", "env_id"} <= set(info) else None


def describe_run(run_dir: str) -> str:
    """'ppo on CartPole-v1, seed 0' from a run directory's run.json."""
    info = _run_info(run_dir) or {}
    return f"{info.get('algo', '?')} on {info.get('env_id', '?')}, seed {info.get('seed', '?')}"


def check_outside_other_runs(path, what: str, own_run_dir: str | None = None) -> None:
    """OutputError when `path` lies in the run directory of a run other than `own_run_dir` (symlinks resolved):
    a run writes only into folders it created or that hold its own files."""
    owner = enclosing_run_dir(path)
    if owner is not None and owner != (os.path.realpath(own_run_dir) if own_run_dir else None):
        raise OutputError(f"the {what} {path} lies inside the run directory {owner} of another run "
                          f"({describe_run(owner)}); a run writes only into its own folders: choose a path outside it")


def check_not_in_use(folder: str, what: str) -> None:
    """DirectoryInUseError when another process holds `folder`'s lock (a live run writes there). Probes
    only a lock file that exists: nothing is created in a folder that has none."""
    from filelock import Timeout

    if not os.path.isfile(os.path.join(folder, LOCK_NAME)):
        return
    lock = _lock(folder)
    try:
        lock.acquire()
    except Timeout:
        raise DirectoryInUseError(f"the {what} is in {folder}, which another process is writing (it holds "
                                  f"{LOCK_NAME} there); wait for it to finish, or write elsewhere") from None
    except OSError:
        return
    lock.release()


def remove_stale_temps(directory: str, pattern: str) -> list[str]:
    """Remove temporary files matching `pattern` in `directory`, which the caller holds locked: any such
    file is a leftover of a killed process (no live rlgeom process writes there). Returns what was removed."""
    return _remove_files(glob.glob(os.path.join(glob.escape(directory), pattern)))


__all__ = [
    "LOCK_NAME", "OutputError", "DirectoryInUseError", "OutputWriteError", "DiskFullError", "temp_name",
    "write_atomically", "write_error", "ensure_writable_dir", "check_writable_file", "lock_directory",
    "try_lock_fresh_directory", "remove_stale_temps", "remove_dead_writers_temps", "NAME_MAX", "RUN_INFO",
    "enclosing_run_dir", "describe_run", "check_outside_other_runs", "check_not_in_use",
]
