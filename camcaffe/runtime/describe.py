"""What an ONNX model file says about itself: blobs and their shapes, layer parameter shapes, outputs, the CAM
head, and what camcaffe's converter embedded (preprocessing, labels with their synset ids); and the text
`camcaffe inspect` prints for such a description."""

from __future__ import annotations

import json
import os
from pathlib import Path

from camcaffe.runtime.labels import Labels

META = "camcaffe."
LABELS_SHOWN = 5


def model_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ONNX file's metadata_props (its weights are not loaded)."""
    from camcaffe.runtime.model import load_onnx_model

    model = load_onnx_model(path, load_weights=False)
    return {p.key: p.value for p in model.metadata_props}


def embedded_labels(metadata: dict[str, str]) -> Labels | None:
    """The labels convert --labels embedded, with their synset ids when it was a synset_words.txt."""
    labels = _json(metadata, "labels")
    if not labels:
        return None
    synsets = _json(metadata, "synsets")
    return Labels(labels, synsets if synsets and len(synsets) == len(labels) else None)


def _json(metadata: dict[str, str], key: str):
    value = metadata.get(META + key)
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return None


def describe_onnx(path: Path) -> dict:
    """Blobs with shapes, parameter shapes, outputs, CAM head and metadata of an ONNX file."""
    import onnx

    from camcaffe.runtime.model import load_onnx_model

    model = load_onnx_model(path, load_weights=False)
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort for foreign files
        inferred = model
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[value.name] = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    initializer_shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    if META + "blobs" in meta:
        blobs = {blob: shapes.get(tensor) for blob, tensor in json.loads(meta[META + "blobs"]).items()}
        layers = json.loads(meta.get(META + "layers", "{}"))
        params = {name: rec["param_shapes"] for name, rec in layers.items() if rec.get("params")}
        outputs = json.loads(meta.get(META + "outputs", "[]"))
    else:
        blobs = shapes
        params = {}
        for node in model.graph.node:
            weights = [initializer_shapes[i] for i in node.input if i in initializer_shapes]
            if weights:
                params[node.name or node.output[0]] = weights
        outputs = [o.name for o in model.graph.output]
    return {
        "name": meta.get(META + "net_name", model.graph.name),
        "blobs": blobs,
        "params": params,
        "outputs": outputs,
        "cam_head": _json(meta, "cam_head"),
        "cam_outputs": _cam_outputs(_json(meta, "cam_outputs"), shapes),
        "metadata": {
            k: v
            for k, v in meta.items()
            if k not in (META + "layers", META + "blobs", META + "preprocess.mean_image")
        },
        "preprocessing": preprocessing_summary(meta),
        "labels": _labels_summary(embedded_labels(meta)),
    }


_CAM_OUTPUT_FIELDS = (
    "top_classes",
    "top_probabilities",
    "maps",
    "maps_resized",
    "class_probabilities",
    "class_maps",
    "class_maps_resized",
)


def _cam_outputs(record, shapes: dict) -> dict | None:
    """The in-graph CAM outputs (`export-cam`, `convert --with-cam`) with their declared shapes."""
    if not isinstance(record, dict):
        return None
    names = [record.get(field) for field in _CAM_OUTPUT_FIELDS]
    if record.get("logits") is not None:
        names.append("cam_probabilities")
    return {
        "top_k": record.get("top_k"),
        "class_input": record.get("class_input"),
        "outputs": {name: shapes.get(name) for name in names if isinstance(name, str)},
    }


def preprocessing_summary(meta: dict[str, str]) -> dict:
    """The embedded caffe.io preprocessing (a mean image appears as its shape)."""
    summary = _json(meta, "preprocess") or {}
    return summary if isinstance(summary, dict) else {}


def _labels_summary(labels: Labels | None) -> dict | None:
    if labels is None:
        return None
    shown = [
        f"{i} {labels.synsets[i]} {labels[i]}" if labels.synsets else f"{i} {labels[i]}"
        for i in range(min(LABELS_SHOWN, len(labels)))
    ]
    return {"count": len(labels), "synset_ids": labels.synsets is not None, "first": shown}


def describe_lines(info: dict) -> list[str]:
    """The text `camcaffe inspect` prints for a description of a Caffe net or an ONNX file."""
    lines = [f"net: {info['name']}", "blobs:"]
    width = max((len(b) for b in info["blobs"]), default=10)
    for blob, shape in info["blobs"].items():
        lines.append(f"  {blob:<{width}}  {tuple(shape) if shape is not None else '?'}")
    lines.append("params:")
    width = max((len(name) for name in info["params"]), default=10)
    for name, shapes in info["params"].items():
        lines.append(f"  {name:<{width}}  {'  '.join(str(tuple(s)) for s in shapes)}")
    lines.append(f"outputs: {', '.join(info['outputs'])}")
    head = info.get("cam_head")
    if head:
        lines.append(
            f"CAM head: {head['kind']}: feature '{head['feature_blob']}' -> '{head['fc_layer']}' "
            f"({head['num_classes']} classes)"
        )
    cam = info.get("cam_outputs")
    if cam:
        shown = ", ".join(f"{name} {_dims_text(dims)}" for name, dims in cam["outputs"].items())
        extra = f"; class input {cam['class_input']}" if cam.get("class_input") else ""
        lines.append(f"in-graph CAM (top {cam['top_k']}): {shown}{extra}")
    if "preprocessing" in info:  # an ONNX file: what convert embedded
        lines.append(f"preprocessing: {_preprocessing_text(info['preprocessing'])}")
        lines.extend(_labels_text(info.get("labels")))
    return lines


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]" if dims is not None else "[?]"


def _preprocessing_text(pre: dict) -> str:
    if not pre:
        return (
            "none embedded (cam then assumes Caffe's ImageNet settings unless given --mean/--raw-scale/...)"
        )
    parts = [
        f"{key.replace('_', '-')} {_value_text(value)}" for key, value in pre.items() if value is not None
    ]
    return ", ".join(parts) if parts else "none embedded"


def _value_text(value) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_value_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _labels_text(labels: dict | None) -> list[str]:
    if not labels:
        return ["labels: none embedded (classes show as class_N; convert --labels FILE embeds them)"]
    ids = ", with synset ids" if labels["synset_ids"] else ""
    first = f"; the first {len(labels['first'])}" if labels["count"] > len(labels["first"]) else ""
    return [f"labels: {labels['count']}{ids}{first}:"] + [f"  {line}" for line in labels["first"]]
