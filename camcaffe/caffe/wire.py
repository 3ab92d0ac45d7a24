"""Minimal protobuf wire-format reading and writing.

Caffemodels are hundreds of megabytes of packed floats; decoding them through the protobuf
runtime copies every value into Python objects. Walking the wire format directly lets the
weights stay zero-copy views of the file's bytes."""

from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """The bytes are not valid protobuf wire format; `offset` is where reading failed."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("varint runs past the end of the data", pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes", pos)


def iter_fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field_number, wire_type, value_or_offset, length) for each field in buf[start:end].

    For VARINT the third item is the value; for the others it is the payload's offset and the
    fourth item its length in bytes."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0 is invalid", pos)
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield field, wire_type, value, 0
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos, end)
            if pos + length > end:
                raise WireError(f"field {field} needs {length} bytes but only {end - pos} remain", pos)
            yield field, wire_type, pos, length
            pos += length
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise WireError(f"field {field} runs past the end of the data", pos)
            yield field, wire_type, pos, 4
            pos += 4
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise WireError(f"field {field} runs past the end of the data", pos)
            yield field, wire_type, pos, 8
            pos += 8
        else:
            raise WireError(f"unsupported wire type {wire_type} for field {field}", pos)


def decode_string(buf: memoryview, offset: int, length: int) -> str:
    return bytes(buf[offset : offset + length]).decode("utf-8", errors="replace")


def unpack_varints(buf: memoryview, offset: int, length: int) -> list[int]:
    values = []
    pos, end = offset, offset + length
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(value)
    return values


def to_signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_key(field: int, wire_type: int) -> bytes:
    return encode_varint((field << 3) | wire_type)


def encode_bytes_field(field: int, payload: bytes | memoryview, header_only: bool = False) -> bytes:
    """Key and length of a length-delimited field, followed by the payload unless header_only."""
    head = encode_key(field, LENGTH_DELIMITED) + encode_varint(len(payload))
    return head if header_only else head + bytes(payload)


def encode_varint_field(field: int, value: int) -> bytes:
    return encode_key(field, VARINT) + encode_varint(value)


def encode_float_field(field: int, value: float) -> bytes:
    return encode_key(field, FIXED32) + struct.pack("<f", value)
