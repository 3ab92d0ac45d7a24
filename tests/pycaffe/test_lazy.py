"""Blobs fetched lazily after a forward: only what is surely read is asked of ONNX Runtime; any other blob is
computed on its first read, with the values of its forward; arrays a script holds are kept live in place."""

from __future__ import annotations

from pathlib import Path

import pytest

import camcaffe as caffe
from camcaffe.convert.random_model import write_random_caffemodel
from tests import caffe_reference
from tests.helpers import assert_close
from tests.pycaffe.test_pycaffe import TINY_NET, caffemodel_arrays, random_input


@pytest.fixture
def tiny(tmp_path: Path):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_NET)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=9)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    runs: list[list[str]] = []
    run = net._run

    def counting(compiled, feeds, tensors):
        runs.append(list(tensors))
        return run(compiled, feeds, tensors)

    net._run = counting
    return net, caffemodel_arrays(caffemodel), runs


def _tensor_blobs(net, tensors: list[str]) -> set[str]:
    names = {t: b for b, t in net._compiled.converted.blob_tensors.items()}
    return {names[t] for t in tensors}


def test_only_outputs_are_fetched_until_a_blob_is_read(tiny) -> None:
    net, weights, runs = tiny
    x = random_input((2, 3, 8, 8), seed=1)
    net.forward(data=x)
    assert len(runs) == 1 and _tensor_blobs(net, runs[0]) == {"prob"}
    assert net.blobs["fc"].shape == (2, 5) and len(runs) == 1  # shapes need no fetch
    reference = caffe_reference.forward(TINY_NET, weights, {"data": x})
    assert_close(net.blobs["fc"].data, reference["fc"], "fc")
    assert len(runs) == 2 and {"conv1", "pool1", "fc"} <= _tensor_blobs(net, runs[1])
    assert_close(net.blobs["conv1"].data, reference["conv1"], "conv1")
    assert len(runs) == 2  # every pending blob came with the first read
    net.forward(data=x)
    assert len(runs) == 3 and _tensor_blobs(net, runs[2]) == {"prob", "fc"}  # fc was read: now eager


def test_pending_values_are_those_of_their_forward(tiny) -> None:
    net, weights, runs = tiny
    x = random_input((2, 3, 8, 8), seed=2)
    net.forward(data=x)
    net.blobs["data"].data[...] = 0.0
    net.params["fc"][0].data[...] *= 5.0
    reference = caffe_reference.forward(TINY_NET, weights, {"data": x})
    assert_close(net.blobs["fc"].data, reference["fc"], "fc of the earlier forward")
    net.forward(data=x, end="pool1")  # fc is not written by this range
    assert not net.blobs["fc"]._pending
    assert_close(net.blobs["fc"].data, reference["fc"], "fc kept")


def test_a_blob_pending_from_an_earlier_forward_survives_a_range(tiny) -> None:
    net, weights, runs = tiny
    x = random_input((2, 3, 8, 8), seed=3)
    net.forward(data=x)
    net.forward(start="prob", end="prob")  # reads fc: fetched from the first forward first
    reference = caffe_reference.forward(TINY_NET, weights, {"data": x})
    assert_close(net.blobs["prob"].data, reference["prob"], "prob again")
    assert_close(net.blobs["pool1"].data, reference["pool1"], "pool1 of the first forward")


def test_held_arrays_are_updated_in_place(tiny) -> None:
    net, weights, runs = tiny
    held = net.blobs["pool1"].data
    view = net.blobs["conv1"].data[0]
    for seed in (4, 5):
        x = random_input((2, 3, 8, 8), seed=seed)
        net.forward(data=x)
        reference = caffe_reference.forward(TINY_NET, weights, {"data": x})
        assert_close(held, reference["pool1"], "held pool1")
        assert_close(view, reference["conv1"][0], "view of conv1")
    assert _tensor_blobs(net, runs[-1]) == {"prob", "pool1", "conv1"}
