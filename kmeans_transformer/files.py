# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""
Writing a user's files safely: every output appears complete or not at all, and nothing is overwritten by accident.

- `replacing_file(path)`: write to a temporary name in the destination directory, then rename it into place (an
  atomic step on POSIX file systems); on any error, or an interrupt, the temporary file is removed and `path` is
  untouched.
- `replacing_directory(path)`: the same for a directory of outputs (a checkpoint, a results dataset): it is built
  under a temporary sibling name, and only when complete does it take `path`'s place; a previous output at `path`
  (with `overwrite`) is removed only after the new one is complete, so stale files of the old one never survive.
- `writing_into_directory(path, is_owned, keep)`: the semantics of transformers' `save_pretrained` for a checkpoint
  directory: the new files are built in a hidden temporary directory inside `path`, then each is renamed into place
  over the file of that name; the files of a previous checkpoint that the new one does not write (`is_owned`: stale
  weight shards, stale estimator files) are removed afterwards, and every other file is left untouched.
- `refuse_overlap(output, inputs)`: an output that resolves to an input, contains one or lies inside one, is refused.

A temporary name starts with `.` and ends with `.partial`, so that it is hidden and recognisable; a leftover one (a
process killed with SIGKILL cannot clean up) is never read as an output and never blocks a rerun; it can be deleted.
"""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


PARTIAL_SUFFIX = ".partial"


def _temporary_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"


def check_new_path(path, overwrite: bool, how: str = "pass --overwrite") -> Path:
    """
    `path` as a `Path`, refused (`FileExistsError`) if something exists there and not `overwrite`; a symbolic link,
    even a dangling one, counts as existing (it is never followed to write elsewhere).
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} exists; {how} to replace it.")
    return path


@contextmanager
def replacing_file(path, overwrite: bool = False, how: str = "pass --overwrite") -> Iterator[Path]:
    """
    Yield a temporary path next to `path` to write to; when the block ends without error, rename it to `path`
    (replacing an existing file only with `overwrite`). On error the temporary file is removed.
    """
    path = check_new_path(path, overwrite, how)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"{path} is a directory.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        yield temporary
        if path.is_symlink():
            path.unlink()  # replace the link itself, never the file it points to
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextmanager
def replacing_directory(path, overwrite: bool = False, how: str = "pass --overwrite") -> Iterator[Path]:
    """
    Yield an empty temporary directory next to `path` to fill; when the block ends without error, it takes `path`'s
    place. A previous directory at `path` (allowed only with `overwrite`, or if it is empty) is removed after the
    new one is complete, so none of its files survive. On error the temporary directory is removed and `path` is
    untouched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory.")
    if path.is_symlink() and not overwrite:
        raise FileExistsError(f"{path} is a symbolic link; {how} to replace it.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} is not empty; {how} to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    temporary.mkdir()
    previous = None
    try:
        yield temporary
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            previous = _temporary_sibling(path)
            os.replace(path, previous)
        os.replace(temporary, path)
    finally:
        if previous is not None and previous.exists() and not path.exists():
            os.replace(previous, path)  # interrupted between the two renames: the previous output comes back
        if temporary.exists():
            shutil.rmtree(temporary)
    if previous is not None and previous.exists():
        shutil.rmtree(previous)


@contextmanager
def writing_into_directory(path, is_owned, keep=lambda existing: False) -> Iterator[Path]:
    """
    Yield an empty temporary directory inside `path` (created if needed) to fill. When the block ends without error,
    each file written there is renamed into `path` (atomic on POSIX), replacing the file of that name unless
    `keep(existing_path)` is true (that file stays as it was); then each file of `path` that `is_owned(file)` and
    that the new files do not include is removed (the leftovers of a previous checkpoint). Files not owned are never
    touched. On error (or an interrupt) while the block runs, the temporary directory is removed and `path` is as it
    was, so a previous checkpoint there still loads; a directory this call created is removed again if the renames
    are interrupted (an existing one may then hold the new files so far and the previous ones for the rest, each
    whole).
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(f"{path} exists and is not a directory.")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(path)
    temporary = _temporary_sibling(path / "checkpoint")
    temporary.mkdir()
    written = None
    try:
        yield temporary
        written, renamed = sorted(entry.name for entry in temporary.iterdir()), []
        try:
            for name in written:
                target = path / name
                if (target.exists() or target.is_symlink()) and keep(target):
                    continue
                if target.is_dir() and not target.is_symlink():
                    raise IsADirectoryError(f"{target} is a directory; the checkpoint file {name} cannot replace it.")
                if target.is_symlink():
                    target.unlink()  # replace the link itself, never the file it points to
                os.replace(temporary / name, target)
                renamed.append(target)
        except BaseException:
            if created:  # a new directory interrupted between its renames: none of it stays
                for target in renamed:
                    target.unlink(missing_ok=True)
                written = None
            raise
        for entry in path.iterdir():
            if entry.name not in written and entry != temporary and not entry.is_dir() and is_owned(entry):
                entry.unlink()
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        if written is None and created and not any(path.iterdir()):
            path.rmdir()  # a new directory whose first save failed: as if never started


def _remove_dead_temporaries(directory: Path) -> None:
    """Remove the temporary directories that saves killed with SIGKILL left in `directory` (their process is gone)."""
    for entry in directory.glob(f".checkpoint.*{PARTIAL_SUFFIX}"):
        pid = entry.name.removeprefix(".checkpoint.").partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def refuse_overlap(output, inputs, what: str = "output") -> None:
    """
    `ValueError` if `output` resolves to one of `inputs`, lies inside one (an input directory) or contains one: writing
    it would destroy what it reads.
    """
    target = Path(output).resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(f"The {what} {output} would overwrite the input {source}; choose another path.")


__all__ = [
    "PARTIAL_SUFFIX",
    "check_new_path",
    "refuse_overlap",
    "replacing_directory",
    "replacing_file",
    "writing_into_directory",
]
