"""Read deploy .prototxt files into a NetParameter, with errors that say where and what.

Parsing is strict first. A field this schema does not know is an error inside a layer whose
type camcaffe converts (a typo there would silently change the model), but is tolerated inside
a layer of an unsupported type, so that such nets are refused by layer type, all at once."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from camcaffe.caffe import caffe_pb2
from camcaffe.errors import CaffeFormatError, InputFileError
from camcaffe.limits import MAX_PROTOTXT_BYTES, limit

_POSITION = re.compile(r"^(\d+):(\d+) : (.*)$", re.S)
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')


@dataclass
class LayerBlock:
    """Where a top-level `layer { }` / `layers { }` block sits in the text."""

    start: int
    end: int
    first_line: int
    v1: bool


def read_prototxt_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: prototxt not found; check the path")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected a .prototxt file")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: prototxt is not readable (permissions); fix its permissions")
    size = path.stat().st_size
    max_bytes = limit(MAX_PROTOTXT_BYTES)
    if size > max_bytes:
        raise CaffeFormatError(
            f"{path}: {size} bytes is too large for a deploy prototxt (limit {max_bytes}, "
            "set CAMCAFFE_MAX_PROTOTXT_BYTES to change it); did you pass the caffemodel by mistake?"
        )
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise CaffeFormatError(
            f"{path}: binary data, not a text prototxt; did you swap the prototxt and caffemodel arguments?"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaffeFormatError(
            f"{path}: binary data (byte {exc.start} is not UTF-8 text), not a text prototxt; did you swap the "
            "prototxt and caffemodel arguments?"
        ) from None


def parse_prototxt(
    text: str,
    source: str,
    is_supported_type: Callable[[str], bool] = lambda _t: True,
    problems: list[str] | None = None,
) -> caffe_pb2.NetParameter:
    """Parse prototxt text. `source` names the file in error messages. Unknown fields inside layers are
    appended to `problems` when it is given (so that one error can list them with the net's other
    problems), else raised together."""
    if not text.strip():
        raise CaffeFormatError(f"{source}: the prototxt is empty; it needs input and layer definitions")
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
        return net
    except text_format.ParseError as exc:
        line, column, message = _split_position(exc)
        if not _UNKNOWN_FIELD.search(message):
            raise CaffeFormatError(
                f"{source}:{line}:{column}: {message.rstrip('.')}; fix the prototxt syntax"
            ) from None
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        line, column, message = _split_position(exc)
        raise CaffeFormatError(
            f"{source}:{line}:{column}: {message.rstrip('.')}; fix the prototxt syntax"
        ) from None
    found = _check_unknown_fields(text, source, is_supported_type)
    if problems is not None:
        problems.extend(found)
    elif found:
        raise CaffeFormatError("; ".join(found))
    return net


def _split_position(exc: text_format.ParseError) -> tuple[int, int, str]:
    line = getattr(exc, "GetLine", lambda: None)()
    column = getattr(exc, "GetColumn", lambda: None)()
    message = str(exc)
    match = _POSITION.match(message)
    if match:
        line, column, message = int(match.group(1)), int(match.group(2)), match.group(3)
    message = message.replace("\n", " ")
    quoted = re.match(r"^'(.*?)': (.*)$", message)
    if quoted:
        snippet = quoted.group(1).strip()
        snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
        message = f"{quoted.group(2)} (in '{snippet}')"
    return line or 0, column or 0, message


def _check_unknown_fields(text: str, source: str, is_supported_type: Callable[[str], bool]) -> list[str]:
    """One problem per layer (of a converted type) with a field this schema does not know."""
    problems: list[str] = []
    blocks = list(iter_layer_blocks(text))
    outside = _mask_blocks(text, blocks)
    try:
        text_format.Parse(outside, caffe_pb2.NetParameter())
    except text_format.ParseError as exc:
        line, column, message = _split_position(exc)
        raise CaffeFormatError(
            f"{source}:{line}:{column}: {message.rstrip('.')}; remove or fix that field"
        ) from None
    for block in blocks:
        snippet = text[block.start : block.end]
        probe = caffe_pb2.NetParameter()
        try:
            text_format.Parse(snippet, probe)
            continue
        except text_format.ParseError as exc:
            line, column, message = _split_position(exc)
        lenient = caffe_pb2.NetParameter()
        text_format.Parse(snippet, lenient, allow_unknown_field=True)
        layer_list = lenient.layers if block.v1 else lenient.layer
        if not layer_list:
            continue
        layer = layer_list[0]
        type_name = _v1_type_name(layer.type) if block.v1 else layer.type
        if not is_supported_type(type_name):
            continue
        unknown = _UNKNOWN_FIELD.search(message)
        field_name = unknown.group(1) if unknown else "?"
        problems.append(
            f"{source}:{block.first_line + line - 1}:{column}: layer '{layer.name}' ({type_name}) has "
            f"unknown field '{field_name}'; check its spelling against Caffe's caffe.proto "
            "(a misspelt field would silently change the model)"
        )
    return problems


def _v1_type_name(value: int) -> str:
    from camcaffe.caffe.v1types import V1_TYPE_NAMES

    return V1_TYPE_NAMES.get(value, f"V1:{value}")


def _mask_blocks(text: str, blocks: list[LayerBlock]) -> str:
    """The text with layer blocks blanked out (newlines kept so line numbers stay true)."""
    pieces = []
    pos = 0
    for block in blocks:
        pieces.append(text[pos : block.start])
        pieces.append(re.sub(r"[^\n]", " ", text[block.start : block.end]))
        pos = block.end
    pieces.append(text[pos:])
    return "".join(pieces)


def iter_layer_blocks(text: str) -> Iterator[LayerBlock]:
    """Find top-level `layer {...}` and `layers {...}` blocks, skipping strings and comments."""
    depth = 0
    pos = 0
    length = len(text)
    block_start = -1
    block_v1 = False
    line = 1
    block_line = 1
    pending_word: tuple[str, int, int] | None = None
    while pos < length:
        char = text[pos]
        if char == "\n":
            line += 1
            pos += 1
            continue
        if char == "#":
            newline = text.find("\n", pos)
            pos = length if newline < 0 else newline
            continue
        if char in "\"'":
            pos = _skip_string(text, pos)
            continue
        if char.isalpha() or char == "_":
            end = pos
            while end < length and (text[end].isalnum() or text[end] == "_"):
                end += 1
            if depth == 0:
                pending_word = (text[pos:end], pos, line)
            pos = end
            continue
        if char == "{":
            if depth == 0 and pending_word and pending_word[0] in ("layer", "layers"):
                block_start, block_v1, block_line = (
                    pending_word[1],
                    pending_word[0] == "layers",
                    pending_word[2],
                )
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0 and block_start >= 0:
                yield LayerBlock(block_start, pos + 1, block_line, block_v1)
                block_start = -1
            if depth < 0:
                return
        elif char not in " \t\r:" and depth == 0:
            pending_word = None
        pos += 1


def _skip_string(text: str, pos: int) -> int:
    quote = text[pos]
    pos += 1
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote or text[pos] == "\n":
            return pos + 1
        pos += 1
    return pos
