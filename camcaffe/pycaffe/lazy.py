"""Blob values fetched on first read after a forward (memory and time close to a bare ONNX Runtime run when a
script reads only the outputs).

A forward asks ONNX Runtime only for the blobs that will surely be read: the outputs it returns, the
`blobs=` it was asked for, blobs a script read after earlier forwards, and blobs whose array is referenced
from outside the net (a script holding `net.blobs[name].data`, or a view of it, sees it updated in place as
in Caffe). Every other blob it wrote is left pending on a DeferredValues; the first read of any of them runs
the same converted model once more on the same (copied) inputs and fills all of them, so the values are
those of that forward even if inputs or parameters changed since."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import numpy as np


class PendingBlob(Protocol):
    _pending: DeferredValues | None

    def _store(self, value: np.ndarray) -> None: ...


class DeferredValues:
    """The blobs one forward did not fetch, and how to compute them: `run(tensor names) -> {tensor: array}`
    with the forward's model and inputs."""

    def __init__(
        self,
        run: Callable[[list[str]], dict[str, np.ndarray]],
        tensors: dict[str, str],
        blobs: dict[str, PendingBlob],
        on_read: Callable[[str], None],
    ):
        self._run: Callable[[list[str]], dict[str, np.ndarray]] | None = run
        self._tensors = tensors
        self._blobs = blobs
        self._on_read = on_read

    def resolve(self, name: str) -> None:
        """Blob `name` is being read: fetch every blob still pending on this forward."""
        self._on_read(name)
        pending = [blob for blob, holder in self._blobs.items() if holder._pending is self]
        run, self._run = self._run, None
        if run is None or not pending:
            return
        values = run(list(dict.fromkeys(self._tensors[blob] for blob in pending)))
        for blob in pending:
            self._blobs[blob]._store(values[self._tensors[blob]])


def held_elsewhere(array: np.ndarray) -> bool:
    """Whether anything besides its blob (one reference) holds the array or a view of it."""
    # getrefcount counts its own argument and the caller's local/attribute access: blob._data + argument
    return sys.getrefcount(array) > 3
