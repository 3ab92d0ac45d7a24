"""A small `cam` job stays light: neither the onnx package (and ml_dtypes) nor pandas is imported on the plain
CAM path of a model camcaffe converted, and the head read from the metadata equals the one found by graph
analysis."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from camcaffe.convert.api import convert_files
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.explain.cam_head import find_cam_head, head_from_metadata
from camcaffe.runtime.session import ModelSession
from tests.helpers import net_text

HEADS = {
    "inner_product": """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
    "inner_product_transposed": """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 4 transpose: true } }
""",
    "conv_classifier": """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "cls" type: "Convolution" bottom: "gap" top: "cls" convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "cls" top: "prob" }
""",
    "class_conv": """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "cls" type: "Convolution" bottom: "feat" top: "cls" convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "cls" top: "cls" }
layer { name: "gap" type: "Pooling" bottom: "cls" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "gap" top: "prob" }
""",
}


def _converted(tmp_path, layers: str):
    (tmp_path / "d.prototxt").write_text(net_text((1, 3, 12, 12), layers))
    write_random_caffemodel(tmp_path / "d.prototxt", tmp_path / "w.caffemodel", seed=4)
    convert_files(tmp_path / "d.prototxt", tmp_path / "w.caffemodel", tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_from_metadata_equals_graph_analysis(name, tmp_path):
    session = ModelSession(_converted(tmp_path, HEADS[name]), "cpu")
    fast = head_from_metadata(session)
    full = find_cam_head(session.model)
    assert fast is not None
    assert (fast.feature_blob, fast.kind, fast.fc_node, fast.num_classes, fast.prob_output) == (
        full.feature_blob,
        full.kind,
        full.fc_node,
        full.num_classes,
        full.prob_output,
    )
    np.testing.assert_array_equal(fast.weights, full.weights)
    assert fast.logits is not None and fast.logits == full.logits  # the class scores the softmax reads
    assert (fast.bias is None) == (full.bias is None)
    if fast.bias is not None:
        np.testing.assert_array_equal(fast.bias, full.bias)


def test_metadata_that_does_not_match_the_graph_is_not_trusted(tmp_path):
    session = ModelSession(_converted(tmp_path, HEADS["inner_product"]), "cpu")
    session.info.metadata["camcaffe.cam_head"] = session.info.metadata["camcaffe.cam_head"].replace(
        '"fc"', '"no_such_layer"'
    )
    assert head_from_metadata(session) is None


@pytest.mark.parametrize("with_cam", [False, True], ids=["plain", "with_cam"])
def test_plain_cam_run_imports_neither_onnx_nor_pandas(tmp_path, with_cam):
    model = _converted(tmp_path, HEADS["inner_product"])
    if with_cam:  # in-graph CAM outputs (export-cam): read from the lite model too
        from camcaffe.explain.cam_export import export_cam_file

        export_cam_file(model, model, 2)
    import cv2

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    code = textwrap.dedent(
        f"""
        import sys
        from camcaffe.cli import main
        assert main(["-q", "cam", {str(model)!r}, {str(photo)!r}, "--out", {str(tmp_path / "out")!r}]) == 0
        heavy = sorted(m for m in ("onnx", "ml_dtypes", "pandas") if m in sys.modules)
        print(",".join(heavy))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported on the plain CAM path: {done.stdout.strip()}"
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 2
