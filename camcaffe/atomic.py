"""Write files so that readers never see a half-written one: temporary file, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def write_atomic(path: str | os.PathLike, writer: Callable[[IO[Any]], None], mode: str = "w") -> Path:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(
            fd, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {})
        ) as handle:
            writer(handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
    return write_atomic(path, lambda handle: np.save(handle, array, allow_pickle=False), mode="wb")


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_atomic(path, lambda handle: json.dump(data, handle, indent=1))
