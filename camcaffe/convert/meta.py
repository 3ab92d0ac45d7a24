"""camcaffe's metadata written into an existing ONNX file (`camcaffe meta`): the preprocessing (a preset and/or
single settings) and the labels, so that `camcaffe cam` needs no flags for a model exported from PyTorch or Keras.

The file is rewritten at the protobuf wire level: every field of the ModelProto except its metadata_props
(field 14) is copied byte for byte, then the metadata entries follow; the weights are never parsed or re-encoded,
and the new file replaces the old one atomically (a crash leaves the old file whole)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from camcaffe.atomic import write_atomic
from camcaffe.caffe.wire import LENGTH_DELIMITED, WireError, iter_fields, read_varint
from camcaffe.convert.api import META_PREFIX
from camcaffe.errors import CamcaffeError, LabelsError, OnnxModelError

METADATA_FIELD = 14  # ModelProto.metadata_props
PREPROCESS_KEY = META_PREFIX + "preprocess"
MEAN_IMAGE_KEY = META_PREFIX + "preprocess.mean_image"
LABELS_KEY = META_PREFIX + "labels"
SYNSETS_KEY = META_PREFIX + "synsets"


def _field_spans(buf: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(field, wire type, start of the field's tag, payload start, end) of each top-level field."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        payload = pos
        if wire_type == 0:
            _, pos = read_varint(buf, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == LENGTH_DELIMITED:
            length, payload = read_varint(buf, pos, end)
            pos = payload + length
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"wire type {wire_type} of field {field} is not used by ONNX", start)
        if field == 0 or pos > end:
            raise WireError(f"field {field} runs past the end of the file", start)
        yield field, wire_type, start, payload, pos


def _entry(buf: memoryview, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for field, wire_type, offset, length in iter_fields(buf, start, end):
        if wire_type == LENGTH_DELIMITED and field in (1, 2):
            text = bytes(buf[offset : offset + length]).decode("utf-8")
            key, value = (text, value) if field == 1 else (key, text)
    return key, value


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _encode_entry(key: str, value: str) -> bytes:
    body = bytearray()
    for field, text in ((1, key), (2, value)):
        data = text.encode("utf-8")
        body += bytes([field << 3 | LENGTH_DELIMITED]) + _varint(len(data)) + data
    return bytes([METADATA_FIELD << 3 | LENGTH_DELIMITED]) + _varint(len(body)) + bytes(body)


def _split(data: bytes, path: Path) -> tuple[list[tuple[int, int]], dict[str, str]]:
    """(byte ranges of everything but the metadata, the metadata in file order)."""
    buf = memoryview(data)
    kept: list[tuple[int, int]] = []
    metadata: dict[str, str] = {}
    try:
        for field, wire_type, start, payload, end in _field_spans(buf):
            if field == METADATA_FIELD and wire_type == LENGTH_DELIMITED:
                key, value = _entry(buf, payload, end)
                metadata[key] = value
            else:
                kept.append((start, end))
    except (WireError, UnicodeDecodeError) as exc:
        raise OnnxModelError(f"{path}: not a valid ONNX file ({exc}); is it corrupt or truncated?") from None
    return kept, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file."""
    from camcaffe.runtime.model import read_lite_model

    model, _ = read_lite_model(path)
    return {p.key: p.value for p in model.metadata_props}


def update_metadata(path: str | os.PathLike, changes: dict[str, str | None]) -> dict[str, str]:
    """Set (or, for None, remove) metadata entries of an ONNX file in place, atomically; the new metadata."""
    from camcaffe.runtime.model import read_lite_model

    path = Path(path)
    _, data = read_lite_model(path)  # the same checks as every reader: exists, is ONNX, has a graph
    kept, metadata = _split(data, path)
    for key, value in changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    view = memoryview(data)

    def write(handle) -> None:
        for start, end in kept:
            handle.write(view[start:end])
        for key, value in metadata.items():
            handle.write(_encode_entry(key, value))

    try:
        write_atomic(path, write, mode="wb")
    except PermissionError:
        raise CamcaffeError(
            f"{path}: cannot be rewritten (permission denied); check the folder's permissions"
        ) from None
    return metadata


def _image_input_dims(model) -> tuple[list[int | None], bool] | None:
    """(N, C, H, W dims of the model's first graph input, None for a variable one; whether it is channels-last),
    or None when that input is not 4-d."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if len(dims) != 4:
            return None
        if dims[1] not in (1, 3, 4) and dims[3] in (1, 3, 4):
            return [dims[0], dims[3], dims[1], dims[2]], True
        return dims, False
    return None


def _input_channels(model) -> int | None:
    """The channel count of the model's image input (NCHW or NHWC), when its shape says so."""
    found = _image_input_dims(model)
    if found is None or found[0][1] not in (1, 3, 4):
        return None
    return found[0][1]


def _input_hw(model) -> tuple[int | None, int | None] | None:
    """(H, W) of the model's image input, None for a variable side; None when it is not a 4-d image input."""
    found = _image_input_dims(model)
    return None if found is None else (found[0][2], found[0][3])


def _check_input_size(model, size: list[int], path: str | os.PathLike) -> list[int]:
    """--input-size H,W for a model whose input height/width are variable (a fixed side must agree)."""
    if len(size) != 2 or min(size) <= 0:
        raise CamcaffeError(f"--input-size must be two positive integers H,W, got {size}")
    declared = _input_hw(model)
    if declared is not None:
        for name, fixed, wanted in zip(("height", "width"), declared, size, strict=True):
            if fixed is not None and fixed != wanted:
                raise CamcaffeError(
                    f"{path}: the input's {name} is fixed at {fixed}; --input-size {size[0]},{size[1]} does not "
                    "fit it (the size is only for models whose height/width are variable)"
                )
    return [int(size[0]), int(size[1])]


def _output_classes(model) -> int | None:
    outputs = list(model.graph.output)
    if not outputs:
        return None
    dims = outputs[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    return None


def metadata_changes(
    path: str | os.PathLike,
    preset_name: str | None = None,
    settings: dict[str, Any] | None = None,
    labels_path: str | os.PathLike | None = None,
    input_size: list[int] | None = None,
) -> dict[str, str | None]:
    """The metadata entries that record a preset, single settings (runtime/presets.SETTINGS keys; they win over
    the preset's), the size to feed a model of variable input size at and a label file in the model at `path`, merged with what it holds; checked against its input
    channels and output classes."""
    from camcaffe.runtime.model import read_lite_model
    from camcaffe.runtime.presets import SETTINGS, check_settings, preset

    model, _ = read_lite_model(path)
    current = {p.key: p.value for p in model.metadata_props}
    changes: dict[str, str | None] = {}
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    if preset_name is not None or given or input_size is not None:
        try:
            stored = json.loads(current.get(PREPROCESS_KEY, "{}"))
        except json.JSONDecodeError:
            stored = {}
        stored = stored if isinstance(stored, dict) else {}
        if preset_name is not None:
            stored = {k: v for k, v in stored.items() if k not in SETTINGS and k != "mean_image"}
            stored.update(preset(preset_name))
            stored["preset"] = preset_name
            changes[MEAN_IMAGE_KEY] = None
        if "mean" in given:
            stored.pop("mean_image", None)
            changes[MEAN_IMAGE_KEY] = None
        stored.update(given)
        try:
            checked = check_settings({k: stored.get(k) for k in SETTINGS}, _input_channels(model))
        except CamcaffeError as exc:
            raise CamcaffeError(f"{path}: {exc}") from None
        stored.update(checked)
        if input_size is not None:
            stored["input_size"] = _check_input_size(model, input_size, path)
        changes[PREPROCESS_KEY] = json.dumps({k: v for k, v in stored.items() if v is not None})
    if labels_path is not None:
        from camcaffe.runtime.labels import load_labels

        labels = load_labels(labels_path)
        classes = _output_classes(model)
        if classes is not None and len(labels) != classes:
            raise LabelsError(
                f"label file {labels_path} has {len(labels)} labels but {path}'s output "
                f"'{model.graph.output[0].name}' has {classes} classes; give the label file of this model"
            )
        changes[LABELS_KEY] = json.dumps(list(labels))
        synsets = getattr(labels, "synsets", None)
        changes[SYNSETS_KEY] = json.dumps(synsets) if synsets else None
    return changes


def describe_metadata(metadata: dict[str, str]) -> list[str]:
    """camcaffe's metadata as lines for people: the preprocessing in full, the rest summarised."""
    lines = []
    for key, value in metadata.items():
        if not key.startswith(META_PREFIX):
            continue
        if key == LABELS_KEY:
            try:
                labels = json.loads(value)
                shown = ", ".join(str(v) for v in labels[:3]) + (", ..." if len(labels) > 3 else "")
                value = f"{len(labels)} labels ({shown})"
            except (json.JSONDecodeError, TypeError):
                pass
        elif len(value) > 200:
            value = f"({len(value)} characters)"
        lines.append(f"{key}: {value}")
    return lines
