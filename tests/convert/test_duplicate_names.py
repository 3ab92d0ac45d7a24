"""Repeated layer names (HED's five 'crop' layers, CRF-as-RNN, SSDLite): Caffe accepts them, and its
Net::CopyTrainedLayersFrom copies each caffemodel layer into the FIRST net layer of that name (a later
caffemodel layer of the same name overwrites the earlier one there); later net layers of that name keep
the values their fillers gave them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from camcaffe.caffe.caffemodel import write_caffemodel
from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import UnsupportedLayerError
from tests import caffe_reference as cr
from tests.helpers import assert_close, blobs_of, net_text

# HED-like: side outputs upsampled and cropped back by layers that all share one name.
HED = net_text(
    (1, 3, 20, 24),
    """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "score1" type: "Convolution" bottom: "conv1" top: "score1" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "score2" type: "Convolution" bottom: "conv2" top: "score2" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "up2" type: "Deconvolution" bottom: "score2" top: "up2" convolution_param { num_output: 1 kernel_size: 4 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "score1" bottom: "data" top: "side1" }
layer { name: "crop" type: "Crop" bottom: "up2" bottom: "data" top: "side2" crop_param { offset: 1 } }
layer { name: "concat" type: "Concat" bottom: "side1" bottom: "side2" top: "fuse_in" }
layer { name: "fuse" type: "Convolution" bottom: "fuse_in" top: "fuse" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "side1" top: "side1" }
layer { name: "relu" type: "ReLU" bottom: "side2" top: "side2" }
""",
)


def test_hed_style_repeated_names_convert_exactly(tmp_path):
    prototxt = tmp_path / "hed.prototxt"
    prototxt.write_text(HED)
    caffemodel = tmp_path / "w.caffemodel"
    weights = write_random_caffemodel(prototxt, caffemodel, seed=2)
    result = convert_files(prototxt, caffemodel, tmp_path / "m.onnx", ConvertOptions(expose_all=True))
    x = np.random.default_rng(0).normal(size=(1, 3, 20, 24)).astype(np.float32)
    ours = blobs_of(result, tmp_path / "m.onnx", {"data": x})
    expected = cr.forward(HED, {n: b for n, (_, b) in weights.record.items()}, {"data": x})
    for blob in ("side1", "side2", "fuse", "fuse_in"):
        assert_close(ours[blob], expected[blob], blob)
    # The pre-ReLU values are there too, under a name per layer occurrence.
    assert {"side1@crop", "side2@crop#2"} <= set(result.converted.tensor_shapes)

    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model)
    node_names = [node.name for node in model.graph.node]
    assert len(node_names) == len(set(node_names))
    initializers = [t.name for t in model.graph.initializer]
    assert len(initializers) == len(set(initializers))
    layers = json.loads({p.key: p.value for p in model.metadata_props}["camcaffe.layers"])
    assert len(layers) == len(result.net.layers)
    assert {"crop", "crop#2", "relu", "relu#2"} <= set(layers)
    assert layers["crop#2"]["tops"] == ["side2"]


def _two_convs(second_filler: str) -> str:
    return net_text(
        (1, 2, 5, 5),
        f"""
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "a" convolution_param {{ num_output: 3 kernel_size: 1 }} }}
layer {{ name: "conv" type: "Convolution" bottom: "a" top: "b"
  convolution_param {{ num_output: 2 kernel_size: 1 {second_filler} }} }}
""",
    )


def test_weights_go_to_the_first_layer_of_a_name_the_last_source_winning(tmp_path):
    prototxt = tmp_path / "d.prototxt"
    prototxt.write_text(
        _two_convs('weight_filler { type: "constant" value: 0.5 } bias_filler { value: 0.25 }')
    )
    rng = np.random.default_rng(1)
    stale = [rng.normal(size=(3, 2, 1, 1)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    final = [rng.normal(size=(3, 2, 1, 1)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    # Caffe copies both source layers named 'conv', in order, into the first net layer 'conv'.
    write_caffemodel(
        tmp_path / "w.caffemodel", [("conv", "Convolution", stale), ("conv", "Convolution", final)]
    )
    result = convert_files(
        prototxt, tmp_path / "w.caffemodel", tmp_path / "m.onnx", ConvertOptions(expose_all=True)
    )
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    blobs = blobs_of(result, tmp_path / "m.onnx", {"data": x})
    a = np.einsum("oc,nchw->nohw", final[0][:, :, 0, 0], x) + final[1][None, :, None, None]
    assert_close(blobs["a"], a, "a")
    b = 0.5 * a.sum(axis=1, keepdims=True).repeat(2, axis=1) + 0.25  # the second keeps its constant fillers
    assert_close(blobs["b"], b, "b")


def test_a_later_layer_with_random_fillers_is_refused(tmp_path):
    prototxt = tmp_path / "d.prototxt"
    prototxt.write_text(_two_convs('weight_filler { type: "xavier" }'))
    with pytest.raises(UnsupportedLayerError, match="also named 'conv'.*weight_filler is 'xavier'.*rename"):
        write_random_caffemodel(prototxt, tmp_path / "w.caffemodel")


def test_cam_head_and_inspect_with_repeated_names(tmp_path):
    text = net_text(
        (1, 3, 8, 8),
        """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "conv" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "gap" type: "Pooling" bottom: "conv" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "fc" type: "Softmax" bottom: "fc" top: "prob" }
""",
    )
    prototxt = tmp_path / "d.prototxt"
    prototxt.write_text(text)
    write_random_caffemodel(prototxt, tmp_path / "w.caffemodel")
    result = convert_files(prototxt, tmp_path / "w.caffemodel", tmp_path / "m.onnx")
    head = result.converted.cam_head
    assert head is not None and head["fc_layer"] == "fc" and head["weights"] == "fc_W"
    assert head["feature_blob"] == "conv" and head["prob_blob"] == "prob"
    for args in ([prototxt, tmp_path / "w.caffemodel"], [tmp_path / "m.onnx"]):
        shown = subprocess.run(
            [sys.executable, "-m", "camcaffe.cli", "inspect", *map(str, args), "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert info["cam_head"]["fc_layer"] == "fc"
        assert info["params"]["conv"] == [[6, 3, 3, 3], [6]]
        assert info["params"]["fc"] == [[4, 6], [4]]
