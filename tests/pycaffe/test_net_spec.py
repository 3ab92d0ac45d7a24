"""caffe.NetSpec / caffe.layers / caffe.params: prototxt written as BVLC net_spec.py writes it (names, tops,
in-place layers, ntop, parameter routing, repeated fields), and a written deploy net loads and runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import camcaffe as caffe
from camcaffe import layers as L
from camcaffe import params as P

LENET_TRAIN = """layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TRAIN
  }
  transform_param {
    scale: 0.00392156886
  }
  data_param {
    source: "mnist_train_lmdb"
    batch_size: 64
    backend: LMDB
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  convolution_param {
    num_output: 20
    kernel_size: 5
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "pool1"
  top: "pool1"
}
layer {
  name: "Dropout1"
  type: "Dropout"
  bottom: "pool1"
  top: "Dropout1"
}
layer {
  name: "score"
  type: "InnerProduct"
  bottom: "Dropout1"
  top: "score"
  inner_product_param {
    num_output: 10
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "score"
  bottom: "label"
  top: "loss"
  loss_weight: 1
}
"""


def test_lenet_prototxt_as_bvlc_writes_it() -> None:
    n = caffe.NetSpec()
    n.data, n.label = L.Data(
        source="mnist_train_lmdb",
        backend=P.Data.LMDB,
        batch_size=64,
        ntop=2,
        transform_param=dict(scale=1.0 / 255),
        include=dict(phase=caffe.TRAIN),
    )
    n.conv1 = L.Convolution(
        n.data,
        kernel_size=5,
        num_output=20,
        weight_filler=dict(type="xavier"),
        param=[{"lr_mult": 1}, {"lr_mult": 2}],
    )
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.score = L.InnerProduct(L.Dropout(n.relu1), num_output=10)
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_weight=1)
    assert str(n.to_proto()) == LENET_TRAIN
    assert n.keys() == ["data", "label", "conv1", "pool1", "relu1", "score", "loss"]
    assert n["score"] is n.score and len(n.vals()) == 7


def test_auto_names_count_per_type_and_top_to_proto() -> None:
    data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    a = L.ReLU(data)
    b = L.ReLU(a)
    c = L.Eltwise(a, b, operation=P.Eltwise.SUM, coeff=[1.0, -1.0])
    net = caffe.to_proto(c)
    assert [(lay.name, list(lay.bottom), list(lay.top)) for lay in net.layer] == [
        ("Input1", [], ["Input1"]),
        ("ReLU1", ["Input1"], ["ReLU1"]),
        ("ReLU2", ["ReLU1"], ["ReLU2"]),
        ("Eltwise1", ["ReLU1", "ReLU2"], ["Eltwise1"]),
    ]
    assert list(net.layer[3].eltwise_param.coeff) == [1.0, -1.0]
    assert net.layer[3].eltwise_param.operation == 1
    assert str(c.to_proto()) == str(net)


def test_ntop_zero_and_several_tops() -> None:
    n = caffe.NetSpec()
    n.data = L.Input(shape=[dict(dim=[1, 4, 2, 2])])
    first, second = L.Slice(n.data, slice_point=2, ntop=2)
    n.first = first
    n.silence = L.Silence(second, ntop=0)
    layers = n.to_proto().layer
    assert [lay.name for lay in layers] == ["data", "first", "silence"]
    assert list(layers[1].top) == ["first", "Slice1"]  # the unnamed second top is auto-named
    assert list(layers[1].slice_param.slice_point) == [2]  # one value given to a repeated field
    assert list(layers[2].bottom) == ["Slice1"] and not layers[2].top


def test_generic_params_and_layer_fields() -> None:
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 4, 4]))
    n.conv = L.Convolution(
        n.data,
        convolution_param=dict(num_output=2, kernel_size=[3], pad=1),
        name="my_conv",
        propagate_down=[False],
        exclude=[dict(stage="deploy")],
    )
    n.py = L.Python(n.conv, module="my_layers", layer="Custom", param_str="{'k': 1}")
    n.up = L.Deconvolution(n.conv, convolution_param=dict(num_output=2, kernel_size=2, stride=2))
    layers = {lay.name: lay for lay in n.to_proto().layer}
    conv = layers["my_conv"]
    assert list(conv.convolution_param.kernel_size) == [3] and list(conv.propagate_down) == [False]
    assert conv.exclude[0].stage == ["deploy"]
    assert (
        layers["py"].python_param.module == "my_layers" and layers["py"].python_param.param_str == "{'k': 1}"
    )
    assert layers["up"].type == "Deconvolution" and list(layers["up"].convolution_param.stride) == [2]


def test_misuse_is_refused_with_the_reason() -> None:
    with pytest.raises(caffe.PycaffeError, match="bottom 0 is a str"):
        L.ReLU("data")
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3]))
    n.fc = L.InnerProduct(n.data, num_outputs=10)
    with pytest.raises(caffe.PycaffeError, match="no field 'num_outputs'"):
        n.to_proto()
    with pytest.raises(AttributeError, match="no value"):
        _ = P.Pooling.MAXIMUM
    with pytest.raises(AttributeError):
        _ = n.missing


def test_a_written_deploy_net_loads_and_runs(tmp_path: Path) -> None:
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 6, 6]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool = L.Pooling(n.conv1, pool=P.Pooling.AVE, global_pooling=True)
    n.prob = L.Softmax(n.pool)
    path = tmp_path / "deploy.prototxt"
    path.write_text(str(n.to_proto()))
    text_format.Parse(path.read_text(), caffe.proto.caffe_pb2.NetParameter())
    caffe.set_random_seed(3)
    net = caffe.Net(str(path), caffe.TEST)
    assert net._layer_names == ["data", "conv1", "relu1", "pool", "prob"]
    out = net.forward(data=np.ones((2, 3, 6, 6), np.float32))
    assert out["prob"].shape == (2, 4, 1, 1)
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-6)
