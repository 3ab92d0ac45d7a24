"""Runtime sessions: provider choice, blobs by name, IO binding with reused buffers."""

from __future__ import annotations

import numpy as np
import pytest

from camcaffe.convert.api import convert_files
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import CamcaffeError, OnnxModelError
from camcaffe.runtime.session import CPU, ModelSession, choose_providers, cuda_usable
from tests.helpers import net_text

NET = net_text(
    (1, 3, 12, 12),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }
""",
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime")
    (folder / "d.prototxt").write_text(NET)
    write_random_caffemodel(folder / "d.prototxt", folder / "w.caffemodel", seed=4)
    convert_files(folder / "d.prototxt", folder / "w.caffemodel", folder / "m.onnx")
    return folder / "m.onnx"


def test_providers():
    assert choose_providers("cpu") == [CPU]
    with pytest.raises(CamcaffeError, match="auto, cuda or cpu"):
        choose_providers("tpu")
    if not cuda_usable():
        assert choose_providers("auto") == [CPU]
        with pytest.raises(CamcaffeError, match="CUDA execution provider is not usable"):
            choose_providers("cuda")


def test_blobs_by_name_added_on_demand(model):
    session = ModelSession(model, "cpu")
    assert session.provider_used == CPU
    x = np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32)
    values = session.run({"data": x}, ["conv@conv", "conv", "fc", "data"])
    np.testing.assert_allclose(values["conv"], np.maximum(values["conv@conv"], 0))
    assert values["data"] is x
    with pytest.raises(OnnxModelError, match="closest: conv"):
        session.run({"data": x}, ["convv"])


def test_io_binding_gives_the_same_values_and_reuses_buffers(model):
    plain = ModelSession(model, "cpu", io_binding=False)
    bound = ModelSession(model, "cpu", io_binding=True)
    rng = np.random.default_rng(1)
    first, second = (rng.normal(size=(4, 3, 12, 12)).astype(np.float32) for _ in range(2))
    first_copy = first.copy()
    a = bound.run({"data": first}, ["fc", "conv"])
    runner = next(iter(bound._runners.values()))
    inputs_before, outputs_before = runner.buffers
    b = bound.run({"data": second}, ["fc", "conv"])
    inputs_after, outputs_after = runner.buffers
    assert [id(v) for v in inputs_after] == [id(v) for v in inputs_before]
    assert [id(v) for v in outputs_after] == [id(v) for v in outputs_before]
    for got, feed in ((a, first), (b, second)):
        expected = plain.run({"data": feed}, ["fc", "conv"])
        np.testing.assert_allclose(got["fc"], expected["fc"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["conv"], expected["conv"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a["fc"], b["fc"])  # results of earlier batches are not views of reused buffers
    np.testing.assert_array_equal(first, first_copy)  # the caller's input array is never written
    c = bound.run({"data": first[:1]}, ["fc"])  # another batch size: new buffers, right values
    np.testing.assert_allclose(c["fc"], a["fc"][:1], rtol=1e-5, atol=1e-6)


def test_io_binding_follows_a_variable_input_size():
    """A model with a variable height/width: output buffers bound for one input size are not reused for another
    (they were keyed by the batch size alone)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    session = ModelSession(model, "cpu", io_binding=True)
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 4, 5), (1, 3, 6, 7), (1, 3, 4, 5), (2, 3, 6, 7)]:
        x = rng.normal(size=shape).astype(np.float32)
        (y,) = session.run({"x": x}, ["y"]).values()
        assert y.shape == shape
        np.testing.assert_array_equal(y, np.maximum(x, 0))


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ('{"mean": "abc"}', "--mean takes comma-separated numbers"),
        ("[1, 2]", "is not a JSON object"),
        ('{"std": [0, 1, 1]}', "every value must be positive"),
        ('{"channel_swap": [0, 0, 1]}', "must be an order of 0..2"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_recorded_preprocessing_is_one_error_naming_the_file(tmp_path, stored, message):
    """Metadata that cannot be a recipe fails when read, once, naming the file (it used to fail each image of
    a variable-size model, or end in an internal error)."""
    import onnx

    from tests.engines.test_model_inputs import _cam_model

    path = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {"camcaffe.preprocess": stored})
    onnx.save(model, path)
    with pytest.raises(OnnxModelError, match=message) as caught:
        ModelSession(path, "cpu").info.preprocess  # noqa: B018
    assert str(caught.value).startswith(str(path))
