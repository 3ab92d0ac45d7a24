"""The pycaffe-compatible surface (`import camcaffe as caffe`): blob/param tables in Caffe order, blobs after
forward() as Caffe computes them (a numpy oracle on a small net; REAL Caffe blobs on GoogLeNet-CAM), reshapes,
constructor variants, modes, net surgery and caffe.io."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.caffe.caffemodel import read_caffemodel
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import CamcaffeError, WeightsError
from camcaffe.pycaffe import net as pycaffe
from camcaffe.runtime.preprocess import Transformer
from camcaffe.runtime.session import cuda_usable
from tests import caffe_reference
from tests.helpers import assert_close, shared_path

TINY_NET = """name: "tiny_cam"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 8
input_dim: 8
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# Slicing the batch axis into two tops bakes the batch into the graph: no symbolic batch.
FIXED_BATCH_NET = """name: "fixed_batch"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 4
input_dim: 4
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "halves" type: "Slice" bottom: "conv1" top: "first" top: "second" slice_param { axis: 0 } }
layer { name: "sum" type: "Eltwise" bottom: "first" bottom: "second" top: "sum" }
"""


@pytest.fixture(autouse=True)
def cpu_mode():
    """Every test starts in CPU mode and leaves pycaffe's module state as it found it."""
    saved = dataclasses.replace(pycaffe._STATE)
    caffe.set_mode_cpu()
    yield
    for name, value in dataclasses.asdict(saved).items():
        setattr(pycaffe._STATE, name, value)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_NET)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=7)
    return prototxt, caffemodel


def caffemodel_arrays(caffemodel: Path) -> dict[str, list[np.ndarray]]:
    weights = read_caffemodel(caffemodel)
    return {
        name: [np.array(b.values).reshape(b.shape) for b in layer.blobs]
        for name, layer in weights.layers.items()
        if layer.blobs
    }


def reference_blobs(text: str, weights: dict[str, list[np.ndarray]], x: np.ndarray) -> dict[str, np.ndarray]:
    return caffe_reference.forward(text, weights, {"data": x})


def random_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)


def assert_blobs_match(net, reference: dict[str, np.ndarray]) -> None:
    assert set(net.blobs) == set(reference)
    for name, value in reference.items():
        assert_close(net.blobs[name].data, value, name)


# ------------------------------------------------------------------------------------- tables


def test_blob_and_param_tables_are_in_caffe_order(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    assert list(net.blobs) == ["data", "conv1", "pool1", "fc", "prob"]
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert list(net.params) == ["conv1", "bn1", "scale1", "fc"]
    assert net._layer_names == ["input", "conv1", "bn1", "scale1", "relu1", "pool1", "fc", "prob"]
    assert net.blobs["data"].data.shape == (2, 3, 8, 8)
    assert net.blobs["conv1"].shape == (2, 4, 8, 8)
    fc = net.blobs["fc"]
    assert (fc.num, fc.channels, fc.height, fc.width, fc.count) == (2, 5, 1, 1, 10)
    conv = net.blobs["conv1"]
    assert (conv.num, conv.channels, conv.height, conv.width, conv.count) == (2, 4, 8, 8, 512)
    shapes = {name: [p.data.shape for p in blobs] for name, blobs in net.params.items()}
    assert shapes == {
        "conv1": [(4, 3, 3, 3), (4,)],
        "bn1": [(4,), (4,), (1,)],
        "scale1": [(4,), (4,)],
        "fc": [(5, 4), (5,)],
    }
    stored = caffemodel_arrays(caffemodel)
    for name, blobs in net.params.items():
        for blob, array in zip(blobs, stored[name], strict=True):
            np.testing.assert_array_equal(blob.data, array.reshape(blob.shape))
    assert net.layer_dict["bn1"].type == "BatchNorm" and len(net.layer_dict["bn1"].blobs) == 3
    assert net.top_names["relu1"] == ["conv1"] and net.bottom_names["fc"] == ["pool1"]


def test_forward_updates_every_blob_as_caffe(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = random_input((2, 3, 8, 8))
    net.blobs["data"].data[...] = x
    conv_before = net.blobs["conv1"].data
    out = net.forward()
    assert list(out) == ["prob"]
    assert out["prob"] is net.blobs["prob"].data
    assert net.blobs["conv1"].data is conv_before  # updated in place, like Caffe's memory
    reference = reference_blobs(TINY_NET, caffemodel_arrays(caffemodel), x)
    assert_blobs_match(net, reference)
    assert net.blobs["conv1"].data.min() >= 0.0  # the in-place ReLU is the last writer
    assert (net.blobs["conv1"].data == 0).any()


def test_forward_kwargs_and_batch_reshape_keep_the_model(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.blobs["data"].reshape(1, 3, 8, 8)
    x = random_input((1, 3, 8, 8), seed=1)
    out = net.forward(data=x)
    assert out["prob"].shape == (1, 5)
    assert net._conversions == 1
    assert_blobs_match(net, reference_blobs(TINY_NET, caffemodel_arrays(caffemodel), x))
    net.blobs["data"].reshape(3, 3, 8, 8)
    x3 = random_input((3, 3, 8, 8), seed=2)
    net.forward(data=x3)
    assert net._conversions == 1
    assert_blobs_match(net, reference_blobs(TINY_NET, caffemodel_arrays(caffemodel), x3))


def test_spatial_reshape_converts_again(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.blobs["data"].reshape(1, 3, 12, 10)
    net.reshape()
    assert net._conversions == 2
    assert net.blobs["conv1"].shape == (1, 4, 12, 10) and net.blobs["pool1"].shape == (1, 4, 1, 1)
    x = random_input((1, 3, 12, 10), seed=3)
    net.blobs["data"].data[...] = x
    net.forward()
    net.forward()
    assert net._conversions == 2
    assert_blobs_match(net, reference_blobs(TINY_NET, caffemodel_arrays(caffemodel), x))


def test_fixed_batch_net_converts_again_for_a_new_batch(tmp_path: Path) -> None:
    prototxt = tmp_path / "fixed.prototxt"
    prototxt.write_text(FIXED_BATCH_NET)
    caffemodel = tmp_path / "fixed.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=3)
    weights = caffemodel_arrays(caffemodel)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    assert not net._compiled.converted.symbolic_batch
    x = random_input((2, 3, 4, 4), seed=4)
    assert net.forward(data=x)["sum"].shape == (1, 2, 4, 4)
    assert net._conversions == 1
    assert_blobs_match(net, reference_blobs(FIXED_BATCH_NET, weights, x))
    net.blobs["data"].reshape(4, 3, 4, 4)
    x3 = random_input((4, 3, 4, 4), seed=5)
    assert net.forward(data=x3)["sum"].shape == (2, 2, 4, 4)
    assert net._conversions == 2
    assert_blobs_match(net, reference_blobs(FIXED_BATCH_NET, weights, x3))


def test_blob_reshape_keeps_leading_values_when_not_growing(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel))
    blob = net.blobs["data"]
    blob.data[...] = np.arange(blob.count, dtype=np.float32).reshape(blob.shape)
    blob.reshape((1, 3, 8, 8))
    np.testing.assert_array_equal(blob.data.reshape(-1), np.arange(192, dtype=np.float32))
    blob.reshape(4, 3, 8, 8)
    assert blob.shape == (4, 3, 8, 8) and not blob.data.any()
    with pytest.raises(pycaffe.PycaffeError):
        blob.reshape(1, 0, 8, 8)


# ------------------------------------------------------------------------------- constructors


def test_constructor_variants_and_phase(tiny) -> None:
    prototxt, caffemodel = tiny
    x = random_input((2, 3, 8, 8), seed=5)
    variants = [
        caffe.Net(str(prototxt), str(caffemodel), caffe.TEST),
        caffe.Net(str(prototxt), caffe.TEST, weights=str(caffemodel)),
        caffe.Net(prototxt, weights=caffemodel),
        caffe.Net(str(prototxt), phase=caffe.TEST, weights=str(caffemodel)),
    ]
    probs = [net.forward(data=x)["prob"].copy() for net in variants]
    for prob in probs[1:]:
        np.testing.assert_array_equal(prob, probs[0])
    with pytest.raises(pycaffe.PycaffeError, match="TRAIN"):
        caffe.Net(str(prototxt), str(caffemodel), caffe.TRAIN)
    with pytest.raises(pycaffe.PycaffeError, match="phase"):
        caffe.Net(str(prototxt), str(caffemodel), "test")
    with pytest.raises(pycaffe.PycaffeError, match="twice|both"):
        caffe.Net(str(prototxt), str(caffemodel), weights=str(caffemodel))


def test_net_without_weights_uses_seeded_random_parameters(tiny) -> None:
    prototxt, _ = tiny
    caffe.set_random_seed(11)
    first = caffe.Net(str(prototxt), caffe.TEST).params["fc"][0].data.copy()
    again = caffe.Net(str(prototxt), caffe.TEST).params["fc"][0].data
    caffe.set_random_seed(12)
    other = caffe.Net(str(prototxt), caffe.TEST).params["fc"][0].data
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_missing_weights_are_refused(tiny, tmp_path: Path) -> None:
    prototxt, _ = tiny
    other = tmp_path / "other.prototxt"
    other.write_text(TINY_NET.replace('"fc"', '"fc_other"'))
    other_model = tmp_path / "other.caffemodel"
    write_random_caffemodel(other, other_model)
    with pytest.raises(WeightsError, match="fc"):
        caffe.Net(str(prototxt), str(other_model), caffe.TEST)


# ----------------------------------------------------------------------------- forward options


def test_forward_end_blobs_and_forward_all(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    weights = caffemodel_arrays(caffemodel)
    x = random_input((2, 3, 8, 8), seed=6)
    out = net.forward(end="pool1", data=x)
    assert list(out) == ["pool1"]
    reference = reference_blobs(TINY_NET, weights, x)
    assert_close(out["pool1"], reference["pool1"], "pool1")
    assert not net.blobs["prob"].data.any()  # layers after `end` did not run
    out = net.forward(blobs=["pool1"])
    assert list(out) == ["prob", "pool1"]
    assert_close(out["prob"], reference["prob"], "prob")
    images = random_input((3, 3, 8, 8), seed=8)
    everything = net.forward_all(data=images)
    assert everything["prob"].shape == (3, 5)
    for i in range(3):
        single = reference_blobs(TINY_NET, weights, images[i : i + 1])
        assert_close(everything["prob"][i : i + 1], single["prob"], f"forward_all prob {i}")


def test_misfit_inputs_are_refused(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    assert not net.params["fc"][0].diff.any()  # zero until a backward (force_backward) fills it
    with pytest.raises(pycaffe.PycaffeError, match="start comes after end"):
        net.forward(start="fc", end="pool1")
    with pytest.raises(pycaffe.PycaffeError, match="not an input"):
        net.forward(image=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(pycaffe.PycaffeError, match="batch sized"):
        net.forward(data=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(pycaffe.PycaffeError, match="reshape"):
        net.forward(data=np.zeros((2, 3, 9, 9), np.float32))
    with pytest.raises(pycaffe.PycaffeError, match="no layer"):
        net.forward(end="nope")


# --------------------------------------------------------------------------------- net surgery


def test_edited_parameters_take_effect_and_save(tiny, tmp_path: Path) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = random_input((2, 3, 8, 8), seed=9)
    weights = caffemodel_arrays(caffemodel)
    net.params["fc"][0].data[...] *= 3.0
    net.params["bn1"][1].data[...] += 0.5
    net.forward(data=x)
    assert net._conversions == 2
    weights["fc"][0] = weights["fc"][0] * 3.0
    weights["bn1"][1] = weights["bn1"][1] + 0.5
    assert_blobs_match(net, reference_blobs(TINY_NET, weights, x))
    net.forward(data=x)
    assert net._conversions == 2  # unchanged since the last conversion
    saved = tmp_path / "edited.caffemodel"
    net.save(str(saved))
    reloaded = caffe.Net(str(prototxt), str(saved), caffe.TEST)
    np.testing.assert_array_equal(reloaded.forward(data=x)["prob"], net.blobs["prob"].data)


def test_copy_from_replaces_parameters(tiny, tmp_path: Path) -> None:
    prototxt, caffemodel = tiny
    other = tmp_path / "other.caffemodel"
    write_random_caffemodel(prototxt, other, seed=99)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    held = net.params["fc"][0].data
    net.copy_from(str(other))
    x = random_input((2, 3, 8, 8), seed=10)
    net.forward(data=x)
    np.testing.assert_array_equal(held, caffemodel_arrays(other)["fc"][0])
    assert_blobs_match(net, reference_blobs(TINY_NET, caffemodel_arrays(other), x))


# --------------------------------------------------------------------------------------- modes


def test_cpu_mode_runs_on_cpu(tiny) -> None:
    prototxt, caffemodel = tiny
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    assert net.provider == "CPUExecutionProvider"


def test_gpu_mode_uses_cuda_or_warns_once_and_falls_back(tiny, capsys) -> None:
    prototxt, caffemodel = tiny
    pycaffe._STATE.warned_no_cuda = False
    caffe.set_mode_gpu()
    caffe.set_mode_gpu()
    caffe.set_device(0)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = random_input((2, 3, 8, 8), seed=12)
    net.forward(data=x)
    warnings = capsys.readouterr().err.count("set_mode_gpu(): CUDA is not usable")
    if cuda_usable():
        assert net.provider == "CUDAExecutionProvider" and warnings == 0
    else:
        assert net.provider == "CPUExecutionProvider" and warnings == 1
    assert_blobs_match(net, reference_blobs(TINY_NET, caffemodel_arrays(caffemodel), x))
    caffe.set_mode_cpu()
    assert net.provider == "CPUExecutionProvider"  # the mode in force at forward time counts
    with pytest.raises(pycaffe.PycaffeError):
        caffe.set_device(-1)


# ------------------------------------------------------------------------------ package & caffe.io


def test_package_exposes_pycaffe_names() -> None:
    assert caffe.Net is pycaffe.Net and (caffe.TRAIN, caffe.TEST) == (0, 1)
    assert issubclass(caffe.PycaffeError, CamcaffeError)
    assert caffe.io.Transformer is Transformer
    assert caffe.__version__
    with pytest.raises(AttributeError):
        _ = caffe.Solver


def test_caffe_io_functions(tmp_path: Path) -> None:
    import cv2

    image = np.zeros((6, 4, 3), np.uint8)
    image[:, :, 2] = 255  # red in BGR
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), image)
    loaded = caffe.io.load_image(filename=str(path))
    assert loaded.shape == (6, 4, 3) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded[0, 0], [1.0, 0.0, 0.0])
    assert caffe.io.load_image(str(path), color=False).shape == (6, 4, 1)
    assert caffe.io.resize_image(loaded, (3, 2)).shape == (3, 2, 3)
    assert caffe.io.oversample([np.zeros((10, 10, 3), np.float32)], (8, 8)).shape == (10, 8, 8, 3)
    transformer = caffe.io.Transformer({"data": (1, 3, 6, 4)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([104, 117, 123]))
    blob = transformer.preprocess("data", loaded)
    np.testing.assert_allclose(blob[:, 0, 0], [-104.0, -117.0, 132.0])
    np.testing.assert_allclose(transformer.deprocess("data", blob), loaded, atol=1e-6)


def test_blobproto_round_trip() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    proto = caffe.io.array_to_blobproto(array)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(proto), array)
    proto.ClearField("shape")
    proto.num, proto.channels, proto.height, proto.width = 1, 2, 3, 4
    assert caffe.io.blobproto_to_array(proto).shape == (1, 2, 3, 4)
    arrays = caffe.io.blobprotovector_str_to_arraylist(caffe.io.arraylist_to_blobprotovector_str([array]))
    np.testing.assert_array_equal(arrays[0], array)


# ------------------------------------------------------------------------- REAL Caffe (../shared)


@pytest.mark.parametrize("folder", ["googlenet_cam14", "googlenet_cam"])
def test_blobs_equal_real_caffe(folder: str) -> None:
    root = shared_path("golden", folder)
    net = caffe.Net(str(root / "deploy.prototxt"), str(root / "weights.caffemodel"), caffe.TEST)
    x = np.load(root / "input.npy")
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    out = net.forward()
    reference = np.load(root / "blobs.npz")
    checked = 0
    for name in reference.files:
        assert_close(net.blobs[name].data, reference[name], f"{folder}:{name}")
        checked += 1
    assert checked >= 50
    splits = [name for name, layer in zip(net._layer_names, net.layers, strict=True) if layer.type == "Split"]
    assert len(splits) >= 7
    for name in splits:  # Caffe shares the source's memory: bit-identical
        (source,) = net.bottom_names[name]
        for top in net.top_names[name]:
            assert net.blobs[top].data is net.blobs[source].data, top
    np.testing.assert_array_equal(out["prob"], net.blobs["prob"].data)
    cam_conv = net.blobs["CAM_conv"].data
    assert cam_conv.min() >= 0.0 and (cam_conv == 0).any()  # post-ReLU, as Caffe's blob table holds it
    classifier = "CAM_fc_14" if folder == "googlenet_cam14" else "CAM_fc"
    classes = 14 if folder == "googlenet_cam14" else 1000
    assert net.params[classifier][0].data.shape == (classes, 1024)
    stored = read_caffemodel(root / "weights.caffemodel").get(classifier).blobs[0].values
    np.testing.assert_array_equal(net.params[classifier][0].data.reshape(-1), stored)


def test_blob_and_layer_tables_match_pycaffe() -> None:
    root = shared_path("golden", "googlenet_cam")
    index = json.loads((root / "blobs_index.json").read_text())
    net = caffe.Net(str(root / "deploy.prototxt"), str(root / "weights.caffemodel"), caffe.TEST)
    assert list(net.blobs) == list(index["blobs"]) == net._blob_names  # Split tops included, in place
    for name in index["blobs"]:
        assert list(net.blobs[name].shape) == index["blobs"][name]["shape"], name
    assert net._layer_names == [layer["name"] for layer in index["layers"]]
    assert [layer.type for layer in net.layers] == [layer["type"] for layer in index["layers"]]
    assert list(net.bottom_names.values()) == [layer["bottoms"] for layer in index["layers"]]
    assert list(net.top_names.values()) == [layer["tops"] for layer in index["layers"]]
    assert net.outputs == index["outputs"]
