"""`camcaffe inspect FILE`: blobs with shapes and layer parameter shapes, as the classic demo
printed by walking net.blobs and net.params."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from camcaffe.errors import InputFileError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="list blobs and parameter shapes of a prototxt(+caffemodel) or ONNX file",
        description="Print each blob with its shape and each layer's parameter shapes.",
    )
    parser.add_argument("file", type=Path, help="deploy .prototxt or .onnx")
    parser.add_argument("weights", type=Path, nargs="?", help=".caffemodel (optional, with a prototxt)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def describe_caffe(prototxt: Path, caffemodel: Path | None) -> dict:
    from camcaffe.caffe.caffemodel import read_caffemodel
    from camcaffe.caffe.net import load_net
    from camcaffe.convert.converter import convert_net
    from camcaffe.convert.head import detect_cam_head
    from camcaffe.convert.registry import is_supported
    from camcaffe.convert.weights import CaffemodelWeights, ZeroWeights

    net = load_net(prototxt, is_supported)
    if caffemodel is not None:
        source = CaffemodelWeights(read_caffemodel(caffemodel))
        converted = convert_net(net, source)
        source.check_complete(str(prototxt))
    else:
        converted = convert_net(net, ZeroWeights())
    blobs = {blob: converted.tensor_shapes[tensor] for blob, tensor in converted.blob_tensors.items()}
    params = {name: record.param_shapes for name, record in converted.layers.items() if record.params}
    return {
        "name": net.name,
        "blobs": blobs,
        "params": params,
        "outputs": net.outputs,
        "cam_head": detect_cam_head(net, converted),
    }


def describe_onnx(path: Path) -> dict:
    from camcaffe.runtime.model import load_onnx_model

    model = load_onnx_model(path, load_weights=False)
    meta = {p.key: p.value for p in model.metadata_props}
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort for foreign files
        inferred = model
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    initializer_shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    if "camcaffe.blobs" in meta:
        blob_map = json.loads(meta["camcaffe.blobs"])
        blobs = {blob: shapes.get(tensor) for blob, tensor in blob_map.items()}
        layers = json.loads(meta.get("camcaffe.layers", "{}"))
        params = {name: rec["param_shapes"] for name, rec in layers.items() if rec.get("params")}
        outputs = json.loads(meta.get("camcaffe.outputs", "[]"))
    else:
        blobs = shapes
        params = {}
        for node in model.graph.node:
            weights = [initializer_shapes[i] for i in node.input if i in initializer_shapes]
            if weights:
                params[node.name or node.output[0]] = weights
        outputs = [o.name for o in model.graph.output]
    head = json.loads(meta["camcaffe.cam_head"]) if "camcaffe.cam_head" in meta else None
    return {
        "name": meta.get("camcaffe.net_name", model.graph.name),
        "blobs": blobs,
        "params": params,
        "outputs": outputs,
        "cam_head": head,
        "metadata": {
            k: v
            for k, v in meta.items()
            if k not in ("camcaffe.layers", "camcaffe.blobs", "camcaffe.preprocess.mean_image")
        },
    }


def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.exists():
        raise InputFileError(f"{path}: not found; check the path")
    if path.suffix.lower() == ".onnx":
        if args.weights is not None:
            raise InputFileError(f"{args.weights}: an ONNX file carries its own weights; drop this argument")
        info = describe_onnx(path)
    else:
        info = describe_caffe(path, args.weights)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
        return 0
    print(f"net: {info['name']}")
    print("blobs:")
    width = max((len(b) for b in info["blobs"]), default=10)
    for blob, shape in info["blobs"].items():
        print(f"  {blob:<{width}}  {tuple(shape) if shape is not None else '?'}")
    print("params:")
    width = max((len(name) for name in info["params"]), default=10)
    for name, shapes in info["params"].items():
        print(f"  {name:<{width}}  {'  '.join(str(tuple(s)) for s in shapes)}")
    print(f"outputs: {', '.join(info['outputs'])}")
    head = info.get("cam_head")
    if head:
        print(
            f"CAM head: {head['kind']}: feature '{head['feature_blob']}' -> '{head['fc_layer']}' "
            f"({head['num_classes']} classes)"
        )
    return 0
