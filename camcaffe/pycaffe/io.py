"""`caffe.io` for legacy scripts: `import camcaffe as caffe`, then `caffe.io.load_image(...)`,
`caffe.io.resize_image`, `caffe.io.oversample`, `caffe.io.Transformer` and the BlobProto helpers.

The image functions are those of `camcaffe.preprocess`, which reproduce pycaffe's numbers (scikit-image's
`imread` + `img_as_float`, `resize(order=1, mode='constant', anti_aliasing=False)`) with numpy and OpenCV."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from camcaffe.caffe import caffe_pb2
from camcaffe.runtime.preprocess import PreprocessError, Transformer, oversample, resize_image
from camcaffe.runtime.preprocess import load_image as _load_image


def load_image(filename: str | os.PathLike, color: bool = True) -> np.ndarray:
    """caffe.io.load_image: float32 HxWx3 RGB in [0, 1] (HxWx1 grey when color=False)."""
    return _load_image(filename, color)


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
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "load_image",
    "oversample",
    "resize_image",
]
