"""Disk full, said plainly: what ran out, while writing what, how much is free, what to do.

A write that fails with ENOSPC (no space), EDQUOT (quota) or EFBIG (the process's file size
limit) becomes a :class:`DiskFullError` (an ``OSError``) whose message a person can act on.
The stage writers (``lm.data.shards``: Parquet shards, markers, manifests; token shards;
tokenizer files; checkpoints) raise it; they also make sure no partial file is left visible.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path


class DiskFullError(OSError):
    """A stage's output did not fit: no space left (ENOSPC), quota (EDQUOT) or file size limit (EFBIG)."""


_NO_ROOM = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
}
# pyarrow (a plain OSError) and safetensors (SafetensorError) carry the errno only in their text.
_NO_ROOM_TEXT = re.compile(
    r"(?:\[errno |\(os error )(28|122|27)\b|No space left on device|Disk quota exceeded|File too large", re.I
)


def no_room_errno(e: BaseException) -> int | None:
    if isinstance(e, OSError) and e.errno in _NO_ROOM:
        return e.errno
    m = _NO_ROOM_TEXT.search(str(e)) if isinstance(e, Exception) else None
    if m is None:
        return None
    return (
        int(m.group(1))
        if m.group(1)
        else {"n": errno.ENOSPC, "d": errno.EDQUOT, "f": errno.EFBIG}[m.group(0)[0].lower()]
    )


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def disk_full_error(path: str | os.PathLike, e: OSError) -> DiskFullError:
    """A DiskFullError for a failed write to ``path``: what ran out, how much is free, what to do."""
    code = no_room_errno(e) or errno.ENOSPC
    where = Path(path).parent
    while not where.exists() and where != where.parent:  # e.g. a temporary directory already removed
        where = where.parent
    try:
        free = f"{_human(shutil.disk_usage(where).free)} free on the filesystem of {where}"
    except OSError:
        free = f"free space of {where} unknown"
    if code == errno.EFBIG:
        advice = "the process's file size limit (ulimit -f / RLIMIT_FSIZE) is too small for this output; raise it"
    else:
        advice = (
            "the stage's output needs more room; free space or set root "
            "to a larger disk, then rerun (finished shards are kept)"
        )
    return DiskFullError(code, f"{_NO_ROOM[code]} while writing {path}: {free}; {advice}")


@contextlib.contextmanager
def reraise_disk_full(path: str | os.PathLike):
    """Turn ENOSPC/EDQUOT/EFBIG (also pyarrow's wording of them) into a DiskFullError naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if no_room_errno(e) is None:
            raise
        raise disk_full_error(path, e) from e
