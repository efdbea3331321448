"""Output paths: check every one before the work starts, then write them all or none.

    check_outputs({"-o": out, "--sheet": sheet}, inputs=[video])   before any slow work
    with all_or_nothing() as stage:                                 after it
        write_video(stage(out), ...)
        write_sheet(stage(sheet), ...)

`check_outputs` refuses, in one line naming the option: an output that is one of the inputs (it would
be overwritten), two options naming the same path, a file output that is a folder (or a folder output
that is a file), a path under a file, and a folder where nothing can be written (read-only, /proc, a
read-only file system). It probes by creating and removing one empty temporary file in the folder that
will receive the output (or, when that folder does not exist yet, in its nearest existing ancestor).

`all_or_nothing` hands out temporary names next to each output (avmdvae.atomic); when the block ends
normally they are all renamed into place, and when it raises they are all removed, so an error while
writing the last output leaves none of them behind and no earlier file of the same name is touched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from avmdvae.errors import ConfigError

PathLike = str | os.PathLike[str]


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:  # one of them does not exist (yet)
        return False


def _probe(folder: Path, label: str, path: Path) -> None:
    """Create and remove one temporary file in the nearest existing ancestor of `folder`."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot write {label} {path}: {existing} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".avmdvae-probe-", dir=existing)
    except OSError as e:
        raise ConfigError(
            f"cannot write {label} {path}: no file can be created in {existing} ({e.strerror or e}); "
            "choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def check_outputs(
    files: Mapping[str, PathLike | None],
    inputs: Iterable[PathLike | None] = (),
    folders: Mapping[str, PathLike | None] | None = None,
) -> None:
    """Refuse unusable outputs before any work (see the module docstring); ConfigError, one line.

    `files` and `folders` map the option that names each output (e.g. "--sheet") to its path; None
    entries (options not given) are skipped. `inputs` are the files and folders the command reads.
    """
    named = [(label, Path(p), False) for label, p in files.items() if p is not None]
    named += [(label, Path(p), True) for label, p in (folders or {}).items() if p is not None]
    sources = [Path(p) for p in inputs if p is not None]
    for i, (label, path, is_folder) in enumerate(named):
        for src in sources:
            if _same(path, src):
                raise ConfigError(f"{label} {path} is an input of this command: choose another name for the output")
        for other_label, other, _ in named[:i]:
            if _same(path, other):
                raise ConfigError(f"{other_label} and {label} both name {path}: give each output its own name")
        if is_folder:
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{label} {path} is a file: give a folder")
            _probe(path, label, path)
        else:
            if path.is_dir():
                raise ConfigError(f"{label} {path} is a folder: give a file name")
            _probe(path.parent, label, path)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[Callable[[PathLike], Path]]:
    """Yield `stage(path) -> temporary path`; every staged path is moved into place at the end of the
    block, or removed if the block raises."""
    from avmdvae.atomic import atomic_path

    with contextlib.ExitStack() as stack:
        yield lambda path: stack.enter_context(atomic_path(path))
