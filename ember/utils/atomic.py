"""Crash-safe file writes: a file appears under its name whole or not at all, even when the process is killed.

Every write goes to a temp file in the destination's folder (a rename across file systems would not be
atomic), is fsynced, renamed over the destination with `os.replace`, and the folder is fsynced so that the
rename survives a power cut. A failed write removes its temp file and leaves the destination as it was.
Temp files have one naming scheme, `.tmp-<name>-<pid>-<random>` (`temp_path`), for checkpoints and prepared
datasets alike, and one cleanup of those a killed process left (`remove_stale_temp_files`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Any

from ember.utils.files import pid_alive

TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)$")


def temp_path(path: str) -> str:
    """A fresh temp name next to `path`: `.tmp-<name>-<pid>-<random>`, the pid telling whose it is."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_temp_files(dirname: str | os.PathLike[str]) -> None:
    """Delete the temp files (and temp folders of sharded checkpoints) in `dirname` of processes that no longer
    run (killed while writing); those of live processes (this one included) may be being written right now and
    are left alone."""
    try:
        names = os.listdir(dirname)
    except OSError:
        return
    for name in names:
        match = _TMP_RE.match(name)
        if match is None or pid_alive(int(match.group("pid"))):
            continue
        path = os.path.join(dirname, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)  # a sharded checkpoint's folder, never committed
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)


def fsync_dir(dirname: str) -> None:
    """Make renames in `dirname` durable; a no-op where folders cannot be opened (Windows) or synced (file
    systems that refuse it). Any other failure (EIO: the disk) is warned about: the file is in place, but a
    crash of the machine could undo its rename."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            warnings.warn(
                f"could not sync the folder {dirname} after renaming a file into it ({exc.strerror or exc}): the "
                "file is written, but a power cut or crash of the machine could undo its rename; check the disk",
                RuntimeWarning, stacklevel=2,
            )
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomically(dst: str) -> Iterator[str]:
    """Yield a temp path in `dst`'s folder (`temp_path(dst)`); once the block has written it whole, rename it
    over `dst` and fsync the folder. On any failure the temp file is removed and `dst` is left as it was."""
    tmp = temp_path(dst)
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(dst))


def write_atomic(dst: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Create `dst` with the bytes `write(file)` writes, fsynced before the rename (see `atomically`)."""
    with atomically(dst) as path, open(path, "xb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def link_atomic(src: str, dst: str) -> None:
    """Give the complete file `src` a second name `dst` atomically (hard link, or a copy where links fail)."""
    with atomically(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


def symlink_atomic(source: str, dst: str) -> None:
    """Point `dst` at `source` through a temp symbolic link renamed over it."""
    with atomically(dst) as path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.symlink(source, path)
