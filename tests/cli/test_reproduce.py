"""The `make reproduce` driver end to end on a tiny synthetic ILSVRC: random net, three photos, XML boxes."""

from __future__ import annotations

import json

import cv2
import numpy as np

from camcaffe.cli.reproduce import PAPER, main
from tests.helpers import net_text

NET = net_text(
    (1, 3, 32, 32),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "CAM_conv" convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "CAM_conv" top: "CAM_conv" }
layer { name: "gap" type: "Pooling" bottom: "CAM_conv" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "CAM_fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)


def _xml(name: str, synset: str, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<annotation><folder>val</folder><filename>{name}</filename><size><width>60</width><height>48</height>"
        f"<depth>3</depth></size><object><name>{synset}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
    )


def test_reproduce_driver_on_a_tiny_set(tmp_path, capsys):
    from camcaffe.convert.random_model import write_random_caffemodel

    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(NET)
    weights = tmp_path / "w.caffemodel"
    write_random_caffemodel(prototxt, weights, seed=5)
    labels = tmp_path / "synset_words.txt"
    labels.write_text(
        "n00000001 ant\nn00000002 bee\nn00000003 cat, house cat\nn00000004 dog\nn00000005 eel\nn00000006 fox\n"
    )
    images, annotations = tmp_path / "val", tmp_path / "bbox"
    images.mkdir()
    annotations.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1, 4):
        name = f"ILSVRC2012_val_{i:08d}"
        cv2.imwrite(str(images / f"{name}.JPEG"), rng.integers(0, 255, (48, 60, 3), dtype=np.uint8))
        (annotations / f"{name}.xml").write_text(_xml(name, f"n0000000{i}", (0, 0, 59, 47)))
    model = tmp_path / "convert" / "googlenet_cam.onnx"
    out = tmp_path / "out"
    common = ["--images", str(images), "--annotations", str(annotations), "--labels", str(labels)]
    code = main([*common, "--model", str(model), "--prototxt", str(prototxt), "--weights", str(weights),
                 "--out", str(out), "--provider", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and model.exists()
    figures = json.loads((out / "evaluation.json").read_text())
    assert figures["images"] == 3 and not figures["missing_results"]
    assert 0.0 <= figures["classification_error"]["top5"] <= figures["classification_error"]["top1"] <= 1.0
    assert figures["localisation_error"]["top5"] >= figures["classification_error"]["top5"]
    assert "paper" in printed and f"{PAPER['localisation']['top1']:.2f}" in printed
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].endswith(",boxes") and len(rows) == 1 + 3 * 5
    # --limit scores only the images it ran
    code = main([*common, "--model", str(model), "--out", str(tmp_path / "out2"), "--limit", "2"])
    assert code == 0 and json.loads((tmp_path / "out2" / "evaluation.json").read_text())["images"] == 2
    # missing inputs: one line saying what to pass
    assert main(["--images", str(tmp_path / "nope"), "--annotations", str(annotations), "--labels",
                 str(labels), "--model", str(model)]) == 2  # fmt: skip
    assert "ILSVRC_IMAGES" in capsys.readouterr().err
