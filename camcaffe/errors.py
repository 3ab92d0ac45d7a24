"""Typed errors. Every failure a user can cause is one of these, carrying a one-line message
that names the file, layer, field or value at fault and what to do about it."""

from __future__ import annotations


class CamcaffeError(Exception):
    """Base of every error camcaffe raises on bad input; the CLI prints it as one line."""

    exit_code = 2


class InputFileError(CamcaffeError):
    """A path is missing, unreadable, a directory, or not writable."""


class CaffeFormatError(CamcaffeError):
    """A prototxt, caffemodel, binaryproto or mean file is malformed or inconsistent."""


class UnsupportedLayerError(CamcaffeError):
    """The net uses layer types or parameters camcaffe cannot convert faithfully."""

    def __init__(self, message: str, layers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.layers = layers or []


class NetRefusedError(CaffeFormatError, UnsupportedLayerError):
    """Problems of several kinds in one net (unknown fields, wiring, unsupported layers), listed together."""


class WeightsError(CaffeFormatError):
    """Weights missing, of the wrong count or shape for a layer."""


class LimitError(CamcaffeError):
    """An input exceeds a configured safety limit (shape, pixels, file size)."""


class OnnxModelError(CamcaffeError):
    """An ONNX file is corrupt, unsafe, or lacks what was asked of it."""


class CamHeadError(OnnxModelError):
    """No CAM-compatible head, or a named feature/fc layer that is not in the model."""


class LabelsError(CamcaffeError):
    """A label file is unreadable or does not match the classifier."""


class ImageError(CamcaffeError):
    """An image cannot be decoded or is outside the accepted limits."""


class VerificationError(CamcaffeError):
    """The converted model disagrees with a reference runtime beyond tolerance."""

    exit_code = 3
