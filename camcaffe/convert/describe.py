"""What a Caffe deploy file (with or without its caffemodel) holds, as `camcaffe inspect` shows it: each blob
with its shape and each layer's parameter shapes, read through the converter."""

from __future__ import annotations

from pathlib import Path


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
