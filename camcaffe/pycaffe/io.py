"""`caffe.io` for legacy scripts: `import camcaffe as caffe`, then `caffe.io.load_image(...)`,
`caffe.io.resize_image`, `caffe.io.oversample`, `caffe.io.Transformer`, the BlobProto and Datum helpers.

The image functions are those of `camcaffe.preprocess`, which reproduce pycaffe's numbers (scikit-image's
`imread` + `img_as_float`, `resize(order=1, mode='constant', anti_aliasing=False)`) with numpy and OpenCV."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from camcaffe.caffe import caffe_pb2
from camcaffe.runtime.preprocess import (
    PreprocessError,
    Transformer,
    decode_image_bytes,
    image_from_decoded,
    oversample,
    resize_image,
)
from camcaffe.runtime.preprocess import load_image as _load_image


def load_image(filename: str | os.PathLike | BinaryIO, color: bool = True) -> np.ndarray:
    """caffe.io.load_image: float32 HxWx3 RGB in [0, 1] (HxWx1 grey when color=False).

    `filename` may also be an open binary file object (e.g. io.BytesIO), read from its current position,
    as scikit-image's imread accepts."""
    read = getattr(filename, "read", None)
    if read is None:
        return _load_image(filename, color)  # type: ignore[arg-type]
    data = read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PreprocessError(
            f"load_image({filename!r}): the file object gave {type(data).__name__}, not bytes; "
            "open the file in binary mode ('rb')"
        )
    label = getattr(filename, "name", None) or f"<{type(filename).__name__}>"
    raw = decode_image_bytes(np.frombuffer(bytes(data), dtype=np.uint8), label)
    return image_from_decoded(raw, label, color)


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """caffe.io.blobproto_to_array: the data (or diff) of a BlobProto, in its shape (legacy 4-D or `shape`)."""
    values = np.array(blob.diff if return_diff else blob.data)
    if values.size == 0 and not return_diff and len(blob.double_data):
        values = np.array(blob.double_data)
    legacy = any(blob.HasField(name) for name in ("num", "channels", "height", "width"))
    shape = (blob.num, blob.channels, blob.height, blob.width) if legacy else tuple(blob.shape.dim)
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise PreprocessError(f"BlobProto declares shape {shape} but holds {values.size} values")
    return values.reshape(shape)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """caffe.io.array_to_blobproto: a BlobProto with `shape` and the (float) values of arr (and diff)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """caffe.io.array_to_datum: a Datum of a C x H x W array; uint8 goes to `data` (bytes), any other type
    to `float_data`."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise PreprocessError(
            f"array_to_datum: the array has shape {arr.shape}; a Datum holds one C x H x W array"
        )
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """caffe.io.datum_to_array: the C x H x W array of a Datum (uint8 from `data`, else float64 from
    `float_data`). An encoded Datum (JPEG/PNG bytes) is refused, as pycaffe cannot reshape it either."""
    shape = (datum.channels, datum.height, datum.width)
    if datum.encoded:
        raise PreprocessError(
            "datum_to_array: the Datum holds an encoded image (encoded: true); decode its bytes with "
            "caffe.io.load_image(io.BytesIO(datum.data))"
        )
    values = (
        np.frombuffer(datum.data, dtype=np.uint8) if len(datum.data) else np.array(datum.float_data, float)
    )
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise PreprocessError(f"Datum declares shape {shape} but holds {values.size} values")
    return values.reshape(shape).copy() if values.dtype == np.uint8 else values.reshape(shape)


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    """caffe.io.arraylist_to_blobprotovector_str: serialise arrays as a BlobProtoVector."""
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """caffe.io.blobprotovector_str_to_arraylist: the arrays of a serialised BlobProtoVector."""
    vector = caffe_pb2.BlobProtoVector()
    vector.ParseFromString(data)
    return [blobproto_to_array(blob) for blob in vector.blobs]


__all__ = [
    "Transformer",
    "array_to_blobproto",
    "array_to_datum",
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "datum_to_array",
    "load_image",
    "oversample",
    "resize_image",
]
