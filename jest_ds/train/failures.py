"""How a run fails: one line that says what went wrong and where (the CLI prints it, exit code 1).

`RunAborted` is a run that cannot go on (the disk filled up, the loss stayed non-finite);
`writing(path)` turns the storage errors of whatever writes `path` (Python's OSError, the
RuntimeError of torch's zip writer) into a `StorageError` naming the path and the cause.
Other exceptions pass through untouched: a bug keeps its traceback.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator

from jest_ds.errors import UserError


class RunAborted(RuntimeError):
    """A run that stopped for a reason its message states in one line."""


class StorageError(RunAborted):
    """A file of the run could not be written: full disk, read-only file system, no permission."""


class RunDirectoryError(UserError, ValueError):
    """`train.out_dir` holds another run (or a later part of this one) that a start would mix with."""


_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied (is the directory read-only?)",
           errno.EPERM: "operation not permitted (is the directory read-only?)",
           errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large for the file system"}
# torch.save / DeepSpeed's save go through torch's zip writer, which reports a failed write as a
# RuntimeError ("PytorchStreamWriter failed writing file ...", "unexpected pos ...") without errno.
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "unexpected pos", "file write failed")
# safetensors (the export's weights) raises its own SafetensorError carrying the OS error as text.
_OS_ERROR_TEXT = {"(os error 28)": errno.ENOSPC, "(os error 30)": errno.EROFS, "(os error 13)": errno.EACCES,
                  "(os error 122)": errno.EDQUOT}


def _free(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return f"{shutil.disk_usage(p).free / 2**20:.0f} MiB free on it"
            except OSError:
                return "free space unknown"
    return "free space unknown"


def storage_error(path: str | Path, exc: BaseException) -> StorageError | None:
    """The one-line StorageError for `exc` raised while writing `path`; None if it is not a storage failure."""
    path = Path(path)
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
        cause = _CAUSES[exc.errno]
        if exc.errno == errno.ENOSPC:
            cause += f" ({_free(path)})"
        named = str(getattr(exc, "filename", None) or "")  # a copy names its source: keep ours then
        where = named if named.startswith(str(path)) else path
        return StorageError(f"cannot write {where}: {cause} [Errno {exc.errno}]")
    code = next((c for text, c in _OS_ERROR_TEXT.items() if text in str(exc)), None)
    if code is not None and not isinstance(exc, OSError):
        return storage_error(path, OSError(code, str(exc)))
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
        return StorageError(f"cannot write {path}: the write failed part-way, the disk is probably full "
                            f"({_free(path)})")
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Run the block that writes `path`; a storage failure becomes a one-line StorageError."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        if isinstance(exc, RunAborted):
            raise
        mapped = storage_error(path, exc)
        if mapped is None:
            raise
        raise mapped from exc
