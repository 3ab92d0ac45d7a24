"""Binary caffemodel reading and writing."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from camcaffe.caffe import caffe_pb2
from camcaffe.caffe.caffemodel import read_caffemodel, write_caffemodel
from camcaffe.errors import CaffeFormatError, InputFileError
from tests.helpers import shared_path

W = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
B = np.array([0.5, -1.5], dtype=np.float32)


@pytest.mark.parametrize("v1", [False, True])
def test_round_trip_v2_and_legacy_v1(tmp_path, v1):
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, [("conv", "Convolution", [W, B]), ("relu", "ReLU", [])], v1=v1)
    weights = read_caffemodel(path)
    layer = weights.layers["conv"]
    assert layer.type == "Convolution"
    assert [b.legacy for b in layer.blobs] == [v1, v1]
    assert layer.blobs[1].shape == ((1, 1, 1, 2) if v1 else (2,))
    np.testing.assert_array_equal(layer.blobs[0].values.reshape(W.shape), W)
    np.testing.assert_array_equal(layer.blobs[1].values, B)
    assert weights.layers["relu"].blobs == []


def test_reads_what_protobuf_writes_including_double_and_unpacked_data(tmp_path):
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="fc", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([2, 2])
    blob.double_data.extend([1.0, 2.0, 3.0, 4.0])
    raw = net.SerializeToString()
    # an unpacked float field (old writers): BlobProto{num:1 channels:1 height:1 width:2 data:5 data:6}
    unpacked = b"\x08\x01\x10\x01\x18\x01\x20\x02" + b"".join(
        b"\x2d" + struct.pack("<f", v) for v in (5.0, 6.0)
    )
    layer2 = b"\x0a\x02fc" + b"\x12\x0cInnerProduct" + b"\x3a" + bytes([len(unpacked)]) + unpacked
    raw += b"\xa2\x06" + bytes([len(layer2)]) + layer2.replace(b"\x0a\x02fc", b"\x0a\x02fd")
    path = tmp_path / "w.caffemodel"
    path.write_bytes(raw)
    weights = read_caffemodel(path)
    np.testing.assert_array_equal(weights.layers["fc"].blobs[0].values, [1, 2, 3, 4])
    assert weights.layers["fd"].blobs[0].shape == (1, 1, 1, 2)
    np.testing.assert_array_equal(weights.layers["fd"].blobs[0].values, [5, 6])


def test_weights_are_zero_copy_views(tmp_path):
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, [("conv", "Convolution", [W, B])])
    values = read_caffemodel(path).layers["conv"].blobs[0].values
    assert not values.flags.owndata and not values.flags.writeable


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        (b'name: "x"\nlayer { }', "text prototxt, not a binary caffemodel"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not a valid caffemodel"),
        (b"\x08\x96\x01", "contains no layers"),
    ],
)
def test_bad_caffemodels(tmp_path, content, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeFormatError, match=message):
        read_caffemodel(path)


def test_truncated_caffemodel_names_the_byte(tmp_path):
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, [("conv", "Convolution", [W, B])])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffeFormatError, match=r"corrupt or truncated at byte \d+ of \d+"):
        read_caffemodel(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        read_caffemodel(tmp_path / "nope.caffemodel")
    with pytest.raises(InputFileError, match="is a directory"):
        read_caffemodel(tmp_path)


def test_real_training_snapshot_open_nsfw():
    weights = read_caffemodel(shared_path("data", "models", "open_nsfw", "weights.caffemodel"))
    types = {layer.type for layer in weights.layers.values()}
    assert {"MemoryData", "SoftmaxWithLoss", "BatchNorm", "Convolution"} <= types
    factor = weights.layers["bn_1"].blobs[2].values[0]
    assert factor == pytest.approx(999.98, rel=1e-4)
