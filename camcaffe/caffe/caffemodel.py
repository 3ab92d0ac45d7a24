"""Read (and, for tests and benchmarks, write) binary .caffemodel files.

Weights are returned as read-only float32 numpy views of the memory-mapped file whenever the
file stores them as packed little-endian floats (every Caffe since 2014), so a 244 MB model is
never copied while it is converted."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcaffe.caffe import wire
from camcaffe.caffe.v1types import V1_TYPE_NAMES
from camcaffe.errors import CaffeFormatError, InputFileError

# NetParameter
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
# LayerParameter / V1LayerParameter
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_NAME, _V1_TYPE, _V1_BLOBS = 4, 5, 6
# BlobProto
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1


@dataclass
class WeightBlob:
    """One parameter blob: its values (flat float32) and the shape the file declares.

    `legacy` is True when the shape came from the deprecated num/channels/height/width fields,
    which Caffe compares against the expected shape left-padded with ones to four axes."""

    values: np.ndarray
    shape: tuple[int, ...]
    legacy: bool

    def as_shape(self, shape: Sequence[int]) -> np.ndarray:
        return self.values.reshape(tuple(shape))


@dataclass
class LayerWeights:
    name: str
    type: str
    blobs: list[WeightBlob] = field(default_factory=list)


@dataclass
class CaffeWeights:
    path: Path
    layers: dict[str, LayerWeights]
    size_bytes: int
    _keepalive: object = None

    def get(self, name: str) -> LayerWeights | None:
        return self.layers.get(name)


def _check_readable_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputFileError(f"{path}: {what} not found; check the path")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected a {what} file")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: {what} is not readable (permissions); fix its permissions")


def read_caffemodel(path: str | os.PathLike) -> CaffeWeights:
    """Parse a binary caffemodel (V2 `layer` or legacy V1 `layers`) into per-layer blobs."""
    path = Path(path)
    _check_readable_file(path, "caffemodel")
    size = path.stat().st_size
    if size == 0:
        raise CaffeFormatError(f"{path}: caffemodel is empty (0 bytes); re-download or re-export the weights")
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mapped)
    head = bytes(buf[:64]).lstrip()
    if head[:5] in (b"name:", b"layer", b"input") or head[:1] == b"#":
        raise CaffeFormatError(
            f"{path}: this is a text prototxt, not a binary caffemodel; pass the .caffemodel weights file"
        )
    try:
        layers = _parse_net(buf, size)
    except wire.WireError as exc:
        raise CaffeFormatError(
            f"{path}: not a valid caffemodel (corrupt or truncated at byte {exc.offset} of {size}: {exc}); "
            "re-download or re-export the weights"
        ) from None
    if not layers:
        raise CaffeFormatError(f"{path}: contains no layers; is this really a .caffemodel?")
    return CaffeWeights(path=path, layers=layers, size_bytes=size, _keepalive=mapped)


def _parse_net(buf: memoryview, end: int) -> dict[str, LayerWeights]:
    layers: dict[str, LayerWeights] = {}
    saw_layer_field = False
    for number, wire_type, offset, length in wire.iter_fields(buf, 0, end):
        if wire_type != wire.LENGTH_DELIMITED:
            continue
        if number == _NET_LAYER:
            layer = _parse_layer(buf, offset, length, _LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS, v1=False)
        elif number == _NET_LAYERS_V1:
            layer = _parse_layer(buf, offset, length, _V1_NAME, _V1_TYPE, _V1_BLOBS, v1=True)
        else:
            continue
        saw_layer_field = True
        if layer.name in layers and not layer.blobs:
            continue
        layers[layer.name] = layer
    if not saw_layer_field:
        return {}
    return layers


def _parse_layer(
    buf: memoryview, start: int, length: int, name_field: int, type_field: int, blobs_field: int, v1: bool
) -> LayerWeights:
    name, type_name = "", ""
    blobs: list[WeightBlob] = []
    for number, wire_type, offset, size in wire.iter_fields(buf, start, start + length):
        if number == name_field and wire_type == wire.LENGTH_DELIMITED:
            name = wire.decode_string(buf, offset, size)
        elif number == type_field:
            if v1 and wire_type == wire.VARINT:
                type_name = V1_TYPE_NAMES.get(offset, f"V1:{offset}")
            elif not v1 and wire_type == wire.LENGTH_DELIMITED:
                type_name = wire.decode_string(buf, offset, size)
        elif number == blobs_field and wire_type == wire.LENGTH_DELIMITED:
            blobs.append(_parse_blob(buf, offset, size, name))
    return LayerWeights(name=name, type=type_name, blobs=blobs)


def _parse_blob(buf: memoryview, start: int, length: int, layer_name: str) -> WeightBlob:
    legacy = [0, 0, 0, 0]
    has_legacy = False
    shape: list[int] | None = None
    chunks: list[np.ndarray] = []
    for number, wire_type, offset, size in wire.iter_fields(buf, start, start + length):
        if number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire_type == wire.VARINT:
            legacy[number - 1] = wire.to_signed64(offset)
            has_legacy = True
        elif number == _BLOB_SHAPE and wire_type == wire.LENGTH_DELIMITED:
            shape = _parse_shape(buf, offset, size)
        elif number == _BLOB_DATA and wire_type == wire.LENGTH_DELIMITED:
            if size % 4:
                raise wire.WireError(f"layer '{layer_name}': packed float data of {size} bytes", offset)
            chunks.append(np.frombuffer(buf, dtype="<f4", count=size // 4, offset=offset))
        elif number == _BLOB_DATA and wire_type == wire.FIXED32:
            chunks.append(np.frombuffer(buf, dtype="<f4", count=1, offset=offset))
        elif number == _BLOB_DOUBLE_DATA and wire_type == wire.LENGTH_DELIMITED:
            if size % 8:
                raise wire.WireError(f"layer '{layer_name}': packed double data of {size} bytes", offset)
            chunks.append(np.frombuffer(buf, dtype="<f8", count=size // 8, offset=offset).astype(np.float32))
        elif number == _BLOB_DOUBLE_DATA and wire_type == wire.FIXED64:
            chunks.append(np.frombuffer(buf, dtype="<f8", count=1, offset=offset).astype(np.float32))
    if len(chunks) == 1:
        values = chunks[0]
    elif chunks:
        values = np.concatenate(chunks)
    else:
        values = np.zeros(0, dtype=np.float32)
    if shape is not None:
        return WeightBlob(values=values, shape=tuple(shape), legacy=False)
    if has_legacy:
        return WeightBlob(values=values, shape=tuple(legacy), legacy=True)
    return WeightBlob(values=values, shape=(values.size,), legacy=False)


def _parse_shape(buf: memoryview, start: int, length: int) -> list[int]:
    dims: list[int] = []
    for number, wire_type, offset, size in wire.iter_fields(buf, start, start + length):
        if number != _SHAPE_DIM:
            continue
        if wire_type == wire.LENGTH_DELIMITED:
            dims.extend(wire.to_signed64(v) for v in wire.unpack_varints(buf, offset, size))
        elif wire_type == wire.VARINT:
            dims.append(wire.to_signed64(offset))
    return dims


# ----------------------------------------------------------------------------------------- writing


def _encode_blob(array: np.ndarray, legacy_4d: bool) -> tuple[bytes, np.ndarray]:
    data = np.ascontiguousarray(array, dtype="<f4")
    if legacy_4d:
        dims = [1] * (4 - data.ndim) + list(data.shape)
        head = b"".join(wire.encode_varint_field(i + 1, d) for i, d in enumerate(dims))
    else:
        packed_dims = b"".join(wire.encode_varint(d) for d in data.shape)
        head = wire.encode_bytes_field(_BLOB_SHAPE, wire.encode_bytes_field(_SHAPE_DIM, packed_dims))
    data_head = wire.encode_key(_BLOB_DATA, wire.LENGTH_DELIMITED) + wire.encode_varint(data.nbytes)
    return head + data_head, data


def write_caffemodel(
    path: str | os.PathLike,
    layers: Iterable[tuple[str, str, Sequence[np.ndarray]]],
    v1: bool = False,
) -> None:
    """Write (name, type, blobs) triples as a binary caffemodel, streaming the float payloads.

    With v1=True the legacy format is written: `layers` entries with enum types and blobs
    described by num/channels/height/width, as caffemodels from 2014 are."""
    from camcaffe.caffe.v1types import V1_TYPE_NUMBERS

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            for name, type_name, blobs in layers:
                encoded = [_encode_blob(np.asarray(b), legacy_4d=v1) for b in blobs]
                if v1:
                    if type_name not in V1_TYPE_NUMBERS:
                        raise ValueError(f"layer type {type_name} has no V1 equivalent")
                    header = wire.encode_bytes_field(_V1_NAME, name.encode()) + wire.encode_varint_field(
                        _V1_TYPE, V1_TYPE_NUMBERS[type_name]
                    )
                    blob_field, layer_field = _V1_BLOBS, _NET_LAYERS_V1
                else:
                    header = wire.encode_bytes_field(_LAYER_NAME, name.encode()) + wire.encode_bytes_field(
                        _LAYER_TYPE, type_name.encode()
                    )
                    blob_field, layer_field = _LAYER_BLOBS, _NET_LAYER
                blob_heads = [
                    wire.encode_key(blob_field, wire.LENGTH_DELIMITED)
                    + wire.encode_varint(len(head) + data.nbytes)
                    for head, data in encoded
                ]
                body_len = len(header) + sum(
                    len(bh) + len(h) + d.nbytes for bh, (h, d) in zip(blob_heads, encoded, strict=True)
                )
                out.write(wire.encode_key(layer_field, wire.LENGTH_DELIMITED) + wire.encode_varint(body_len))
                out.write(header)
                for blob_head, (head, data) in zip(blob_heads, encoded, strict=True):
                    out.write(blob_head)
                    out.write(head)
                    out.write(memoryview(data).cast("B"))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
