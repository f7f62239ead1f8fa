"""Files written whole or not at all: an export goes to a temporary file next to its target,
which is renamed over the target only once the export is complete."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from batchrun.errors import BatchrunError


@contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    binary: bool = False,
    what: str = "the results",
    instead: str = "leave out -o to write them to standard output",
) -> Iterator[IO[Any]]:
    """A stream (text, or bytes with ``binary``) to a temporary file next to ``path``, renamed
    over it only when the block completes: a reader never sees half a file, and a failed
    export (a full disk, an error midway) leaves the old file, or none, behind. The file gets
    the permissions the replaced one had, or those a new file gets (0666 less the umask), not
    the temporary file's 0600.

    Only regular files are written. A path that is a device, a pipe, a socket or a directory
    is refused, so an export never replaces ``/dev/null`` with a file. A symbolic link to a
    regular file (or to a file not there yet) is followed: the file it points to is replaced
    and the link stays. Messages call the content ``what`` and offer ``instead`` as the way
    out of a path that is not a regular file."""
    target = _regular_target(Path(path), what=what, instead=instead)
    mode = _mode_for(target)
    try:
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path(".")
        )
    except OSError as exc:
        raise BatchrunError(f"{path}: cannot write there ({exc.strerror})") from exc
    try:
        stream: IO[Any] = (
            os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        )
        with stream:
            yield stream
            stream.flush()
            # Best effort: some file systems (FAT, some network mounts) refuse modes.
            with contextlib.suppress(OSError):
                os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except OSError as exc:
        Path(temp_name).unlink(missing_ok=True)
        raise BatchrunError(
            f"{path}: cannot write {what} ({exc.strerror}); nothing was written there"
        ) from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _mode_for(target: Path) -> int:
    """The permission bits of the file that ``target`` will be: those of the file it
    replaces, or 0666 less the process's umask for a new one."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _regular_target(path: Path, *, what: str, instead: str) -> Path:
    """The file to replace for ``path``: itself, or where its symbolic link points; a
    BatchrunError for anything but a regular file (or a file that does not exist yet)."""
    target = path.resolve() if path.is_symlink() else path
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise BatchrunError(f"{path}: cannot write there ({exc.strerror})") from None
    if stat.S_ISREG(mode):
        return target
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    via = f" (a link to {target})" if target != path else ""
    raise BatchrunError(
        f"{path}{via} is {kind}; give the path of a regular file for {what}, or {instead}"
    )


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
}
