"""Write a real caffemodel with seeded random weights for any deploy prototxt (tests, benchmarks)."""

from __future__ import annotations

import os

from camcaffe.caffe.caffemodel import write_caffemodel
from camcaffe.caffe.net import load_net
from camcaffe.convert.converter import ConvertOptions, convert_net
from camcaffe.convert.registry import is_supported
from camcaffe.convert.weights import RandomWeights


def write_random_caffemodel(
    prototxt: str | os.PathLike,
    output: str | os.PathLike,
    seed: int = 0,
    v1: bool = False,
    input_shapes: dict[str, list[int]] | None = None,
) -> RandomWeights:
    """Every parametrised layer of the net gets random blobs of the shapes Caffe expects. Train/val
    nets work too (`input_shapes` for data tops whose layer does not give their shape). A layer whose
    name repeats is written with the blobs of the first layer of that name, which is where Caffe copies
    them (the later one keeps its fillers, see converter._filler_params)."""
    net = load_net(prototxt, is_supported, collect=True)
    weights = RandomWeights(seed=seed)
    convert_net(net, weights, ConvertOptions(input_shapes=input_shapes))
    # Like Caffe, store every layer (those without parameters have no blobs).
    layers = [
        (layer.name, layer.type, weights.record.get(layer.name, (layer.type, []))[1])
        for layer in net.layers
        if not v1 or layer.type != "Input"
    ]
    write_caffemodel(output, layers, v1=v1)
    return weights
