"""`convert --verify`: OpenCV is not asked to judge layers it computes differently from the fork (it would
make --verify delete a correct file); what comes before them is still compared."""

from __future__ import annotations

import pytest

from camcaffe.cli import main
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.convert.verify import opencv_available
from tests.helpers import net_text

SE_BLOCK = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "gap" type: "Pooling" bottom: "conv" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "squeeze" type: "Convolution" bottom: "gap" top: "squeeze" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "gate" type: "Sigmoid" bottom: "squeeze" top: "gate" }
layer { name: "axpy" type: "Axpy" bottom: "gate" bottom: "conv" bottom: "data4" top: "out" }
layer { name: "after" type: "ReLU" bottom: "out" top: "after" }
"""


def test_axpy_is_not_judged_by_opencv_and_the_file_is_kept(tmp_path, capsys):
    if not opencv_available():
        pytest.skip("cv2 without dnn.readNetFromCaffe: --verify has nothing to compare with")
    text = net_text(
        (1, 3, 8, 8),
        'layer { name: "data4" type: "Convolution" bottom: "data" top: "data4" '
        "convolution_param { num_output: 4 kernel_size: 1 } }\n" + SE_BLOCK,
    )
    (tmp_path / "d.prototxt").write_text(text)
    write_random_caffemodel(tmp_path / "d.prototxt", tmp_path / "w.caffemodel", seed=3)
    out = tmp_path / "m.onnx"
    code = main(["convert", str(tmp_path / "d.prototxt"), str(tmp_path / "w.caffemodel"), "-o", str(out), "--verify"])
    err = capsys.readouterr().err
    assert code == 0 and out.exists(), err
    assert "did not compare what 1 layer(s) compute" in err and "layer 'axpy' (Axpy)" in err
    assert "verify: 5 blobs compared with OpenCV" in err  # data4, conv, gap, squeeze, gate; not out, after
