"""Crash-safe file writes: a file appears under its name whole or not at all, even when the process is killed.

Every write goes to a temp file in the destination's folder (a rename across file systems would not be
atomic), is fsynced, renamed over the destination with `os.replace`, and the folder is fsynced so that the
rename survives a power cut. A failed write removes its temp file and leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Any

TMP_PREFIX = ".tmp-"


def temp_path(path: str) -> str:
    """A fresh temp name next to `path`: `.tmp-<name>-<pid>-<random>`, the pid telling whose it is."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")


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
def atomically(dst: str, tmp: str | None = None) -> Iterator[str]:
    """Yield a temp path in `dst`'s folder (`tmp`, else `temp_path(dst)`); once the block has written it whole,
    rename it over `dst` and fsync the folder. On any failure the temp file is removed and `dst` is left as it was."""
    tmp = tmp if tmp is not None else temp_path(dst)
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(dst))


def write_atomic(dst: str, write: Callable[[IO[bytes]], Any], tmp: str | None = None) -> None:
    """Create `dst` with the bytes `write(file)` writes, fsynced before the rename (see `atomically`)."""
    with atomically(dst, tmp) as path, open(path, "xb") as f:
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


def symlink_atomic(source: str, dst: str, tmp: str | None = None) -> None:
    """Point `dst` at `source` through a temp symbolic link renamed over it (`tmp`, else `temp_path(dst)`)."""
    with atomically(dst, tmp) as path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.symlink(source, path)
