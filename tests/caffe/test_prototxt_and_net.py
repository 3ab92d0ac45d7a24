"""Deploy prototxt parsing, V1 upgrade, inputs, phases and connectivity checks."""

from __future__ import annotations

import pytest

from camcaffe.caffe.net import load_net
from camcaffe.convert.registry import is_supported
from camcaffe.errors import CaffeFormatError, InputFileError, LimitError

CONV = 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }'


def _load(tmp_path, text: str):
    path = tmp_path / "deploy.prototxt"
    path.write_text(text)
    return load_net(path, is_supported)


def test_three_input_forms_give_the_same_input_layer(tmp_path):
    forms = [
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n',
        'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n',
        'layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n',
    ]
    for form in forms:
        net = _load(tmp_path, form + CONV)
        assert net.input_shapes == {"data": [1, 3, 8, 8]}
        assert net.layers[0].type == "Input" and net.outputs == ["conv"]


def test_v1_net_is_upgraded(tmp_path):
    net = _load(
        tmp_path,
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
        'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" '
        "convolution_param { num_output: 2 kernel_size: 3 } }\n"
        'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n'
        'layers { name: "fc" type: INNER_PRODUCT bottom: "conv" top: "fc" inner_product_param { num_output: 4 } }',
    )
    assert net.v1 and [layer.type for layer in net.layers] == ["Input", "Convolution", "ReLU", "InnerProduct"]
    assert net.layers[1].convolution_param.num_output == 2


def test_test_phase_rules(tmp_path):
    text = (
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
        + CONV
        + '\nlayer { name: "drop_train" type: "Dropout" bottom: "conv" top: "conv" include { phase: TRAIN } }'
        '\nlayer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" top: "loss" exclude { phase: TEST } }'
        '\nlayer { name: "prob" type: "Softmax" bottom: "conv" top: "prob" include { phase: TEST } }'
    )
    net = _load(tmp_path, text)
    assert [layer.name for layer in net.layers] == ["input", "conv", "prob"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "the prototxt is empty"),
        (
            'input: "data"\nlayer { name: "a" type: "ReLU" bottom: "data" top: "a" ',
            r"deploy.prototxt:2:\d+: .*fix the prototxt syntax",
        ),
        (
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_outputs: 2 } }',
            r"deploy.prototxt:2:\d+: layer 'c' \(Convolution\) has unknown field 'num_outputs'",
        ),
        ('input: "data" input_dim: 1 input_dim: 3 input_dim: 8\n' + CONV, "exactly 4"),
        (
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 0 input_dim: 8\n' + CONV,
            "must be a positive integer",
        ),
        (
            'input: "data" input_dim: 1 input_dim: 3 input_dim: -8 input_dim: 8\n' + CONV,
            "must be a positive integer",
        ),
        (
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
            'layer { name: "c" type: "Convolution" bottom: "image" top: "c" }',
            "reads blob 'image' that no earlier layer produces",
        ),
        (
            # Repeated layer names are Caffe-legal; the second layer writing 'conv' again is not.
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n' + CONV + "\n" + CONV,
            "layer 'conv' .*writes blob 'conv', which an earlier layer already produced",
        ),
        (
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n' + CONV + "\n"
            'layer { name: "c2" type: "ReLU" bottom: "data" top: "conv" }',
            "already produced",
        ),
        ('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n', "no layers"),
    ],
)
def test_bad_prototxt_messages(tmp_path, text, message):
    with pytest.raises(CaffeFormatError, match=message):
        _load(tmp_path, text)


def test_absurd_input_shape_is_refused_before_allocation(tmp_path):
    with pytest.raises(LimitError, match="1x3x100000x100000 .* CAMCAFFE_MAX_BLOB_ELEMENTS"):
        _load(
            tmp_path, 'input: "data" input_dim: 1 input_dim: 3 input_dim: 100000 input_dim: 100000\n' + CONV
        )


def test_binary_garbage_and_paths(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(CaffeFormatError, match="swap the prototxt and caffemodel"):
        load_net(path)
    with pytest.raises(InputFileError, match="not found"):
        load_net(tmp_path / "missing.prototxt")
    with pytest.raises(InputFileError, match="is a directory"):
        load_net(tmp_path)


def test_unknown_fields_in_unsupported_layers_are_left_to_the_type_check(tmp_path):
    net = _load(
        tmp_path,
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
        'layer { name: "n" type: "Normalize" bottom: "data" top: "n" norm_param { eps: 1 } }',
    )
    assert net.layers[1].type == "Normalize"
