"""Convert deploy prototxt + caffemodel files into a self-describing ONNX file."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcaffe import __version__
from camcaffe.caffe.caffemodel import read_caffemodel
from camcaffe.caffe.net import CaffeNet, load_net
from camcaffe.convert.converter import ConvertedNet, ConvertOptions, convert_net
from camcaffe.convert.head import detect_cam_head
from camcaffe.convert.onnx_io import build_model, write_model
from camcaffe.convert.registry import is_supported
from camcaffe.convert.weights import CaffemodelWeights, RandomWeights
from camcaffe.errors import CaffeFormatError, InputFileError, WeightsError

META_PREFIX = "camcaffe."


@dataclass
class Preprocessing:
    """How images become the net's input, in caffe.io.Transformer terms (net channel order)."""

    mean: list[float] | None = None
    mean_image: np.ndarray | None = None
    raw_scale: float | None = None
    channel_swap: list[int] | None = None
    input_scale: float | None = None
    std: list[float] | None = None  # per channel, after the mean (torchvision's Normalize)
    resize: str | None = None  # how `cam` cuts the photo: warp, crop, torchvision
    resize_filter: str | None = None  # caffe or a pil-* filter (runtime/presets.RESIZE_FILTERS)
    preset: str | None = None  # the preset these came from, for people reading the metadata

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Preprocessing:
        """A preset's settings (runtime/presets.py), with the given non-None values instead."""
        from camcaffe.runtime.presets import preset

        values = {**preset(name), **{k: v for k, v in overrides.items() if v is not None}}
        if overrides.get("mean_image") is not None:
            values["mean"] = None
        return cls(**values, preset=name)

    def to_metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        settings = {
            "mean": self.mean,
            "raw_scale": self.raw_scale,
            "channel_swap": self.channel_swap,
            "input_scale": self.input_scale,
            "std": self.std,
            "resize": self.resize,
            "resize_filter": self.resize_filter,
            "preset": self.preset,
        }
        settings = {k: v for k, v in settings.items() if v is not None}
        if self.mean_image is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(self.mean_image, dtype=np.float32), allow_pickle=False)
            meta[META_PREFIX + "preprocess.mean_image"] = base64.b64encode(buffer.getvalue()).decode()
            settings["mean_image"] = list(np.asarray(self.mean_image).shape)
        if settings:
            meta[META_PREFIX + "preprocess"] = json.dumps(settings)
        return meta


@dataclass
class ConversionResult:
    paths: list[Path]
    converted: ConvertedNet
    net: CaffeNet
    metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class NoWeights:
    """The source for a net converted without a caffemodel: records every layer that asks for blobs."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def __call__(self, layer, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        if expected:
            self.asked.append((layer.name, layer.type))
        return [np.zeros(shape, dtype=np.float32) for shape in expected]

    def check_none_needed(self, source: str) -> None:
        if self.asked:
            names = ", ".join(f"'{name}' ({type_name})" for name, type_name in self.asked)
            raise WeightsError(
                f"{source}: {len(self.asked)} layer(s) need weights: {names}; give the .caffemodel "
                "(or --random-weights SEED for testing)"
            )


def check_input_shapes(net: CaffeNet, options: ConvertOptions | None) -> None:
    """--input-shape names must be input blobs of the net (train/val data tops included)."""
    inputs = [top for layer in net.layers if layer.type == "Input" for top in layer.top]
    for name in (options.input_shapes or {}) if options else {}:
        if name not in inputs:
            raise CaffeFormatError(
                f"{net.source}: --input-shape {name}: the net has no input blob of that name; its inputs are "
                f"{', '.join(inputs)}"
            )


def convert_to_graph(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike | None,
    options: ConvertOptions | None = None,
    random_seed: int | None = None,
) -> tuple[CaffeNet, ConvertedNet, list[str]]:
    """Parse and convert; weights from the caffemodel, or seeded random ones with `random_seed`. With
    neither, the net must have no parameters (else WeightsError names the layers that need them)."""
    net = load_net(prototxt, is_supported, collect=True)
    check_input_shapes(net, options)
    warnings: list[str] = []
    if caffemodel is not None:
        source = CaffemodelWeights(read_caffemodel(caffemodel))
        converted = convert_net(net, source, options)
        source.check_complete(str(prototxt))
        warnings.extend(source.warnings)
    elif random_seed is not None:
        converted = convert_net(net, RandomWeights(seed=random_seed), options)
    else:
        no_weights = NoWeights()
        converted = convert_net(net, no_weights, options)
        no_weights.check_none_needed(str(prototxt))
    converted.cam_head = detect_cam_head(net, converted)
    if converted.cam_head and converted.cam_head["feature_tensor"] not in converted.outputs:
        converted.outputs.append(converted.cam_head["feature_tensor"])
    warnings.extend(converted.warnings)
    return net, converted, warnings


def build_metadata(
    net: CaffeNet,
    converted: ConvertedNet,
    prototxt: Path,
    caffemodel: Path | None,
    preprocessing: Preprocessing | None,
    labels: list[str] | None,
) -> dict[str, str]:
    meta = {
        META_PREFIX + "version": __version__,
        META_PREFIX + "source.prototxt": prototxt.name,
        META_PREFIX + "source.prototxt.sha256": sha256_file(prototxt),
        META_PREFIX + "net_name": net.name,
        META_PREFIX + "inputs": json.dumps({name: shape for name, shape in converted.inputs}),
        META_PREFIX + "outputs": json.dumps(list(net.outputs)),
        META_PREFIX + "blobs": json.dumps(converted.blob_tensors),
        META_PREFIX + "layers": json.dumps(
            {name: record.__dict__ for name, record in converted.layers.items()}
        ),
        META_PREFIX + "symbolic_batch": json.dumps(converted.symbolic_batch),
    }
    if caffemodel is not None:
        meta[META_PREFIX + "source.caffemodel"] = caffemodel.name
        meta[META_PREFIX + "source.caffemodel.sha256"] = sha256_file(caffemodel)
    else:
        has_params = any(record.params for record in converted.layers.values())
        meta[META_PREFIX + "source.caffemodel"] = "(random weights)" if has_params else "(none: no parameters)"
    if preprocessing is not None:
        meta.update(preprocessing.to_metadata())
    if labels is not None:
        meta[META_PREFIX + "labels"] = json.dumps(labels)
        synsets = getattr(labels, "synsets", None)  # from a synset_words.txt: evaluate matches ids with them
        if synsets:
            meta[META_PREFIX + "synsets"] = json.dumps(synsets)
    if converted.cam_head is not None:
        meta[META_PREFIX + "cam_head"] = json.dumps(converted.cam_head)
    return meta


def _classifier_classes(converted: ConvertedNet) -> int | None:
    if converted.cam_head:
        return int(converted.cam_head["num_classes"])
    return None


def load_labels_for(path: str | os.PathLike, converted: ConvertedNet) -> list[str]:
    from camcaffe.runtime.labels import check_label_count, load_labels

    labels = load_labels(path)
    classes = _classifier_classes(converted)
    if classes is not None:
        check_label_count(labels, classes, path)
    return labels


def convert_files(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike | None,
    output: str | os.PathLike,
    options: ConvertOptions | None = None,
    preprocessing: Preprocessing | None = None,
    labels_path: str | os.PathLike | None = None,
    external_data: bool | None = None,
    random_seed: int | None = None,
) -> ConversionResult:
    prototxt, output = Path(prototxt), Path(output)
    model_path = Path(caffemodel) if caffemodel is not None else None
    folder = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise InputFileError(f"{output}: is a directory; give the output .onnx file name (-o model.onnx)")
    if not folder.exists():
        raise InputFileError(f"{folder}: output folder does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise InputFileError(f"{folder}: output folder is not writable; choose another -o path")
    net, converted, warnings = convert_to_graph(prototxt, model_path, options, random_seed)
    labels = load_labels_for(labels_path, converted) if labels_path is not None else None
    metadata = build_metadata(net, converted, prototxt, model_path, preprocessing, labels)
    try:
        paths = write_model(converted, output, metadata, external_data)
    except OSError as exc:
        raise InputFileError(
            f"{output}: cannot write the ONNX file ({exc.strerror}); check space and permissions"
        ) from None
    return ConversionResult(paths=paths, converted=converted, net=net, metadata=metadata, warnings=warnings)


def convert_in_memory(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike | None,
    options: ConvertOptions | None = None,
    random_seed: int | None = None,
):
    """Convert to an in-memory onnx.ModelProto (for small nets, tests and the pycaffe surface)."""
    net, converted, warnings = convert_to_graph(prototxt, caffemodel, options, random_seed)
    metadata = build_metadata(
        net, converted, Path(prototxt), Path(caffemodel) if caffemodel else None, None, None
    )
    return build_model(converted, metadata, with_initializers=True), net, converted, warnings


__all__ = [
    "ConversionResult",
    "Preprocessing",
    "convert_files",
    "convert_in_memory",
    "convert_to_graph",
]
