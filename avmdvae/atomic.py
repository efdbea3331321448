"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed process therefore never leaves a half-written output under the final name, and an output
that already existed stays intact until its replacement is complete.

Temporary names say who made them: `.<stem>.<host>-<pid>-<random>.tmp<suffix>` (host: a short hash
of the machine's name). A process killed by SIGKILL cannot remove its temporary, so the first write
of a process into a folder removes the temporaries of our naming there that are stale: made on this
machine by a process that is gone, or by an earlier process than the one now holding that pid. Files
of any other naming, and temporaries of other machines (shards writing into one shared folder), are
never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TMP_MARK = ".tmp"
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:6]
_TEMP_NAME = re.compile(r"\..*\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\.[^.]*)?")
# A temporary is stale when it is older than the process holding its pid by more than this (the
# kernel's boot time, which process start times are counted from, is rounded to the second).
_START_SLACK_S = 2.0

_swept: set[Path] = set()
_swept_lock = threading.Lock()


def temp_name(path: str | os.PathLike[str], pid: int | None = None) -> str:
    """A fresh temporary file name for `path` (same folder), owned by process `pid` (default: this one).

    The name keeps the suffix of `path` so that writers that infer the format from the extension
    (PyAV, soundfile, PIL, matplotlib) keep working.
    """
    p = Path(path)
    owner = os.getpid() if pid is None else pid
    return f".{p.stem}.{_HOST}-{owner}-{secrets.token_hex(4)}{TMP_MARK}{p.suffix}"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None where unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> float | None:
    """Start time of process `pid` (seconds since the epoch) from /proc, or None where unknown."""
    fields = _proc_stat(pid)
    if fields is None:
        return None
    try:
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is running (a zombie, finished but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    fields = _proc_stat(pid)
    return fields is None or fields[0] != "Z"


def is_stale_temp(path: Path) -> bool:
    """True for a temporary of our naming, made on this machine, whose writer is gone."""
    m = _TEMP_NAME.fullmatch(path.name)
    if m is None or m["host"] != _HOST:
        return False
    pid = int(m["pid"])
    if pid == os.getpid():
        return False  # ours: perhaps being written by another thread right now
    if not pid_alive(pid):
        return True
    started = _process_start(pid)
    if started is None:
        return False
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    return mtime < started - _START_SLACK_S  # the pid was reused by a later process


def sweep_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Remove the stale temporaries of our naming in `folder` (not below it); returns how many."""
    if os.name != "posix":  # pid checks below rely on POSIX kill(pid, 0)
        return 0
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(".") and TMP_MARK in entry.name and entry.is_file(follow_symlinks=False):
            p = Path(entry.path)
            if is_stale_temp(p):
                p.unlink(missing_ok=True)
                n += 1
    return n


def _sweep_once(folder: Path) -> None:
    """Sweep `folder` the first time this process writes into it."""
    key = folder.absolute()
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    sweep_stale_temps(key)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    while True:
        tmp_path = path.parent / temp_name(path)
        try:  # mode 0o666 less the umask: the usual permissions of a new file
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save one array in .npy format (readable with `np.load(..., mmap_mode="r")`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
