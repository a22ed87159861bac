"""Atomic file writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, Union


def atomic_write(path: str | Path, data: Union[bytes, Callable[[BinaryIO], object]]) -> None:
    """Write ``data`` (bytes, or a function given the open binary file) to ``<path>.tmp<pid>``,
    then rename it over ``path`` (``os.replace``). The process id keeps ranks that write the
    same file apart. A write that fails removes its temporary file; a ``*.tmp*`` file left behind
    is debris of a process that was killed mid-write."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
