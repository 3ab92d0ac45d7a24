"""The converter registry covers every layer type the project promises."""

import subprocess
import sys

from camcaffe.convert.registry import supported_types

REQUIRED = {
    "Input",
    "Convolution",
    "Deconvolution",
    "InnerProduct",
    "Pooling",
    "ReLU",
    "PReLU",
    "ELU",
    "Sigmoid",
    "TanH",
    "AbsVal",
    "BNLL",
    "Power",
    "Exp",
    "Log",
    "LRN",
    "BatchNorm",
    "Scale",
    "Bias",
    "Eltwise",
    "Concat",
    "Slice",
    "Split",
    "Dropout",
    "Flatten",
    "Reshape",
    "Softmax",
    "Crop",
    "ArgMax",
}


def test_every_required_layer_type_is_registered():
    # Input is handled by the driver itself (it becomes the graph input).
    assert REQUIRED - {"Input"} <= set(supported_types())


def test_registry_loads_every_family_even_if_one_was_imported_first():
    code = (
        "import camcaffe.convert.layers_conv\n"
        "from camcaffe.convert.registry import get_converter\n"
        "assert get_converter('Softmax') is not None and get_converter('ReLU') is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
