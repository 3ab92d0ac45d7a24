"""Write a real caffemodel with seeded random weights for any deploy prototxt (tests, benchmarks)."""

from __future__ import annotations

import os

from camcaffe.caffe.caffemodel import write_caffemodel
from camcaffe.caffe.net import load_net
from camcaffe.convert.converter import ConvertOptions, convert_net
from camcaffe.convert.registry import is_supported
from camcaffe.convert.weights import RandomWeights


def write_random_caffemodel(
    prototxt: str | os.PathLike, output: str | os.PathLike, seed: int = 0, v1: bool = False
) -> RandomWeights:
    """Every parametrised layer of the net gets random blobs of the shapes Caffe expects."""
    net = load_net(prototxt, is_supported)
    weights = RandomWeights(seed=seed)
    convert_net(net, weights, ConvertOptions())
    # Like Caffe, store every layer (those without parameters have no blobs).
    layers = [
        (layer.name, layer.type, weights.record.get(layer.name, (layer.type, []))[1])
        for layer in net.layers
        if not v1 or layer.type != "Input"
    ]
    write_caffemodel(output, layers, v1=v1)
    return weights
