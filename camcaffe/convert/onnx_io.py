"""Turn a ConvertedNet into an ONNX file.

The graph structure is built with the `onnx` package; initializers are streamed into the file
straight from the (memory-mapped) caffemodel arrays, so converting never holds a second copy of
the weights. Protobuf merges repeated occurrences of an embedded message, so the model is written
as: the serialized model without initializers, then one more `graph` field holding them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from camcaffe.caffe import wire
from camcaffe.convert.converter import BATCH_SYMBOL, ConvertedNet
from camcaffe.limits import EXTERNAL_DATA_THRESHOLD, limit

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17
_MODEL_GRAPH_FIELD = 7
_GRAPH_INITIALIZER_FIELD = 5
_TENSOR_RAW_DATA_FIELD = 9


def _value_info(name: str, shape: list[int] | None, batch_led: bool) -> onnx.ValueInfoProto:
    if shape is None:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    dims: list[int | str] = list(shape)
    if batch_led:
        dims[0] = BATCH_SYMBOL
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def build_model(
    converted: ConvertedNet, metadata: dict[str, str], with_initializers: bool
) -> onnx.ModelProto:
    builder = converted.builder
    inputs = [_value_info(name, shape, converted.symbolic_batch) for name, shape in converted.inputs]
    outputs = [
        _value_info(name, converted.tensor_shapes.get(name), name in converted.batch_led)
        for name in converted.outputs
    ]
    initializers = []
    if with_initializers:
        initializers = [
            _tensor_header(name, array, with_data=True) for name, array in builder.initializers.items()
        ]
    graph = helper.make_graph(builder.nodes, converted.name or "caffe_net", inputs, outputs, initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="camcaffe",
        producer_version=metadata.get("camcaffe.version", ""),
        ir_version=IR_VERSION,
    )
    model.doc_string = f"Converted from Caffe by camcaffe: {converted.name}"
    helper.set_model_props(model, metadata)
    return model


def _onnx_dtype(array: np.ndarray) -> int:
    return int(helper.np_dtype_to_tensor_dtype(array.dtype))


def _tensor_header(name: str, array: np.ndarray, with_data: bool = False) -> TensorProto:
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = _onnx_dtype(array)
    tensor.dims.extend(array.shape)
    if with_data:
        tensor.raw_data = (
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        )
    return tensor


def _little_endian_bytes(array: np.ndarray) -> memoryview:
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    return memoryview(contiguous).cast("B")


def write_model(
    converted: ConvertedNet,
    path: str | os.PathLike,
    metadata: dict[str, str],
    external_data: bool | None = None,
) -> list[Path]:
    """Write the ONNX file (and `<name>.data` when weights go external) atomically; return the paths."""
    path = Path(path)
    total = sum(array.nbytes for array in converted.builder.initializers.values())
    if external_data is None:
        # Protobuf messages cannot exceed 2 GiB; the default threshold keeps a margin for the graph.
        external_data = total > limit(EXTERNAL_DATA_THRESHOLD)
    data_path = path.with_name(path.name + ".data")
    tmp_model = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp_data = data_path.with_name(f".{data_path.name}.tmp{os.getpid()}")
    try:
        structure = build_model(converted, metadata, with_initializers=False).SerializeToString()
        with open(tmp_model, "wb") as out:
            out.write(structure)
            if external_data:
                pieces = list(_external_initializers(converted, tmp_data, data_path.name))
            else:
                pieces = list(_inline_initializers(converted))
            graph_len = sum(len(head) + (len(body) if body is not None else 0) for head, body in pieces)
            out.write(
                wire.encode_key(_MODEL_GRAPH_FIELD, wire.LENGTH_DELIMITED) + wire.encode_varint(graph_len)
            )
            for head, body in pieces:
                out.write(head)
                if body is not None:
                    out.write(body)
        if external_data:
            os.replace(tmp_data, data_path)
        os.replace(tmp_model, path)
    finally:
        for leftover in (tmp_model, tmp_data):
            if leftover.exists():
                leftover.unlink()
    return [path, data_path] if external_data else [path]


def _inline_initializers(converted: ConvertedNet) -> Iterator[tuple[bytes, memoryview | None]]:
    for name, array in converted.builder.initializers.items():
        header = _tensor_header(name, array).SerializeToString()
        payload = _little_endian_bytes(array)
        raw_head = wire.encode_key(_TENSOR_RAW_DATA_FIELD, wire.LENGTH_DELIMITED) + wire.encode_varint(
            payload.nbytes
        )
        tensor_len = len(header) + len(raw_head) + payload.nbytes
        head = (
            wire.encode_key(_GRAPH_INITIALIZER_FIELD, wire.LENGTH_DELIMITED)
            + wire.encode_varint(tensor_len)
            + header
            + raw_head
        )
        yield head, payload


def _external_initializers(
    converted: ConvertedNet, data_file: Path, location: str
) -> Iterator[tuple[bytes, memoryview | None]]:
    offset = 0
    with open(data_file, "wb") as data_out:
        for name, array in converted.builder.initializers.items():
            payload = _little_endian_bytes(array)
            padding = (-offset) % 64
            if padding:
                data_out.write(b"\0" * padding)
                offset += padding
            data_out.write(payload)
            tensor = _tensor_header(name, array)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", location),
                ("offset", str(offset)),
                ("length", str(payload.nbytes)),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += payload.nbytes
            body = tensor.SerializeToString()
            yield (
                wire.encode_key(_GRAPH_INITIALIZER_FIELD, wire.LENGTH_DELIMITED)
                + wire.encode_varint(len(body))
                + body,
                None,
            )
