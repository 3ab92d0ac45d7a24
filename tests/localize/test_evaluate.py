"""ILSVRC classification / localisation error and the saliency metrics, on cases whose figures are known."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from camcaffe.cli import main
from camcaffe.localize.evaluate import (
    ClassResolver,
    EvaluationError,
    auc,
    evaluate_clsloc,
    iou,
    perturbation_series,
    pointing_hit,
    synset_ids,
)
from camcaffe.localize.groundtruth import GroundTruthError, GtObject, load_groundtruth

LABELS = {0: "ant", 1: "bee", 2: "cat, house cat"}
RESOLVER = ClassResolver(LABELS, True, "labels.txt", {0: "n00000001", 1: "n00000002", 2: "n00000003"})


def _row(image, rank, cls, box, boxes=""):
    x0, y0, x1, y1 = box
    return {
        "image": f"photos/{image}.jpg",
        "rank": str(rank),
        "class_index": str(cls),
        "label": LABELS[cls],
        "probability": "0.5",
        "x0": str(x0),
        "y0": str(y0),
        "x1": str(x1),
        "y1": str(y1),
        "overlay": "",
        "error": "",
        "boxes": boxes,
    }


def test_iou_is_inclusive_like_ilsvrc():
    assert iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert iou((0, 0, 9, 9), (0, 0, 19, 9)) == 0.5  # 100 px of 200
    assert iou((0, 0, 9, 9), (10, 0, 19, 9)) == 0.0  # touching, no shared pixel
    assert iou((0, 0, 0, 0), (0, 0, 1, 1)) == 0.25


def test_hand_computed_errors():
    gt = {
        "several_boxes": [GtObject("cat", (0, 0, 9, 9)), GtObject("cat", (20, 20, 39, 39))],
        "wrong_class_perfect_box": [GtObject("n00000002", (0, 0, 9, 9))],  # bee, by synset id
        "iou_half": [GtObject("0", (0, 0, 9, 9))],  # ant, by index
        "iou_below_half": [GtObject("ant", (0, 0, 9, 9))],
        "two_guesses": [GtObject("house cat", (0, 0, 9, 9))],  # one of the label's names
        "two_classes": [GtObject("ant", (0, 0, 9, 9)), GtObject("bee", (10, 10, 19, 19))],
        "no_results": [GtObject("ant", (0, 0, 9, 9))],
        "named_outside_top5": [GtObject("cat", (0, 0, 9, 9))],
        "no_boxes": [],  # not scored
    }
    rows = [
        _row("several_boxes", 1, 2, (20, 20, 39, 39)),
        _row("several_boxes", 2, 0, (0, 0, 9, 9)),
        _row("wrong_class_perfect_box", 1, 0, (0, 0, 9, 9)),
        _row("wrong_class_perfect_box", 2, 1, (50, 50, 60, 60)),
        _row("iou_half", 1, 0, (0, 0, 19, 9)),
        _row("iou_below_half", 1, 0, (0, 0, 20, 9)),
        _row("two_guesses", 1, 0, (0, 0, 9, 9)),
        _row("two_guesses", 2, 2, (0, 0, 9, 9)),
        _row("two_classes", 1, 0, (0, 0, 9, 9)),
        _row("two_classes", 2, 1, (0, 0, 9, 9)),
        _row("named_outside_top5", 1, 0, (0, 0, 9, 9)),
        _row("named_outside_top5", 7, 2, (0, 0, 9, 9)),  # mapped with --class: not a guess
        _row("not_in_gt", 1, 0, (0, 0, 9, 9)),
    ]
    result = evaluate_clsloc(gt, rows, RESOLVER)
    assert result.n_images == 8 and result.missing == ["no_results"] and result.unmatched_results == 1
    # per image (top-1 cls, top-1 loc, top-5 cls, top-5 loc):
    # several 0 0 0 0 | wrong-class 1 1 0 1 | half 0 0 0 0 | below 0 1 0 1 | two-guesses 1 1 0 0
    # two-classes .5 .5 0 .5 | no-results 1 1 1 1 | outside-top5 1 1 1 1
    assert result.cls_error == {1: pytest.approx(4.5 / 8), 5: pytest.approx(2 / 8)}
    assert result.loc_error == {1: pytest.approx(5.5 / 8), 5: pytest.approx(4.5 / 8)}
    only = evaluate_clsloc(gt, rows, RESOLVER, ignore_missing=True)
    assert only.n_images == 7 and only.cls_error[5] == pytest.approx(1 / 7)


def test_combine_uses_the_second_dt_box():
    gt = {"a": [GtObject("bee", (30, 30, 39, 39))]}
    rows = [
        _row("a", 1, 1, (0, 0, 9, 9), boxes="0 0 9 9;30 30 39 39"),
        _row("a", 2, 0, (0, 0, 9, 9), boxes="0 0 9 9"),
    ]
    first = evaluate_clsloc(gt, rows, RESOLVER, "first")
    combined = evaluate_clsloc(gt, rows, RESOLVER, "combine")
    assert first.loc_error == {1: 1.0, 5: 1.0}
    assert combined.loc_error == {1: 1.0, 5: 0.0} and combined.cls_error == {1: 0.0, 5: 0.0}


def test_class_checks():
    with pytest.raises(EvaluationError, match="'zebra' matches no label in labels.txt"):
        evaluate_clsloc({"a": [GtObject("zebra", (0, 0, 1, 1))]}, [_row("a", 1, 0, (0, 0, 1, 1))], RESOLVER)
    partial = ClassResolver({0: "ant"}, False, "results.csv")
    result = evaluate_clsloc(
        {"a": [GtObject("zebra", (0, 0, 1, 1))]}, [_row("a", 1, 0, (0, 0, 1, 1))], partial
    )
    assert result.unknown_classes == ["zebra"] and result.cls_error[1] == 1.0
    with pytest.raises(EvaluationError, match="file stem"):
        evaluate_clsloc({"b": [GtObject("ant", (0, 0, 1, 1))]}, [_row("a", 1, 0, (0, 0, 1, 1))], RESOLVER)


def test_groundtruth_formats(tmp_path):
    folder = tmp_path / "xml"
    folder.mkdir()
    (folder / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><filename>ILSVRC2012_val_00000001</filename><size><width>50</width><height>40</height>"
        "</size><object><name>n00000003</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax>"
        "<ymax>20</ymax></bndbox></object><object><name>n00000003</name><bndbox><xmin>5</xmin><ymin>5</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    table = load_groundtruth(folder)
    assert table == {
        "ILSVRC2012_val_00000001": [
            GtObject("n00000003", (1, 2, 30, 20)),
            GtObject("n00000003", (5, 5, 9, 9)),
        ]
    }
    table_csv = tmp_path / "gt.csv"
    table_csv.write_text("# comment\nimage,class,x0,y0,x1,y1\nsub/a.png,cat,1,2,3,4\na2.jpg,0,0,0,5,5\n")
    assert load_groundtruth(table_csv) == {
        "a": [GtObject("cat", (1, 2, 3, 4))],
        "a2": [GtObject("0", (0, 0, 5, 5))],
    }
    table_csv.write_text("image,class,x0,y0,x1,y1\na.png,cat,5,2,3,4\n")
    with pytest.raises(GroundTruthError, match="row 2: box"):
        load_groundtruth(table_csv)
    table_csv.write_text("image,label,x0\na.png,cat,5\n")
    with pytest.raises(GroundTruthError, match="lacks y0, x1, y1"):
        load_groundtruth(table_csv)
    (folder / "bad.xml").write_text("<annotation><object>")
    with pytest.raises(GroundTruthError, match="bad.xml: not valid XML"):
        load_groundtruth(folder)
    words = tmp_path / "synset_words.txt"
    words.write_text("n00000001 ant\nn00000002 bee\n")
    assert synset_ids(words) == {0: "n00000001", 1: "n00000002"}


def test_curves_and_pointing():
    assert auc([1, 1, 1]) == 1.0 and auc([1, 0]) == 0.5 and auc([0, 0.5, 1]) == 0.5
    x = np.arange(8, dtype=np.float32).reshape(2, 2, 2) + 1
    saliency = np.array([[0.1, 0.9], [0.5, 0.0]])
    deletion = perturbation_series(x, saliency, 4, np.zeros_like(x), reveal=False)
    assert deletion.shape == (5, 2, 2, 2)
    assert np.array_equal(deletion[0], x) and not deletion[4].any()
    assert deletion[1][:, 0, 1].tolist() == [0, 0] and deletion[1][:, 0, 0].tolist() == [1, 5]
    insertion = perturbation_series(x, saliency, 2, np.full_like(x, -1), reveal=True)
    assert insertion[1][0].tolist() == [[-1, 2], [3, -1]] and np.array_equal(insertion[2], x)
    cam = np.zeros((20, 30))
    cam[5, 25] = 1
    assert pointing_hit(cam, [(20, 0, 29, 10)]) and not pointing_hit(cam, [(0, 0, 10, 10)])
    assert pointing_hit(cam, [(0, 0, 20, 10)], tolerance=5)


def test_evaluate_command_with_model(tmp_path, tiny_run):
    out, model, gt = tiny_run
    assert main(["-q", "evaluate", str(out), "--gt", str(gt), "--model", str(model), "--steps", "4"]) == 0
    figures = json.loads((out / "evaluation.json").read_text())
    assert figures["images"] == 2 and set(figures["classification_error"]) == {"top1", "top5"}
    s = figures["saliency"]
    assert s["images"] == 2 and s["pointing_trials"] == 2 and 0 <= s["pointing_game"] <= 1
    assert 0 <= s["deletion_auc"] <= 1 and 0 <= s["insertion_auc"] <= 1
    assert 0 <= s["average_drop_percent"] <= 100 and 0 <= s["increase_in_confidence_percent"] <= 100
    code = main(["-q", "evaluate", str(out / "results.csv"), "--gt", str(tmp_path / "none.csv")])
    assert code == 2


def test_evaluate_recomputes_with_the_recipe_cam_used_not_the_models_metadata(tmp_path, tiny_run):
    """cam --preset caffe on a model whose metadata says torchvision: evaluate --model must use caffe's recipe
    (as cam_settings.json records it), the same figures as on the model without that metadata."""
    out, model, gt = tiny_run
    annotated = tmp_path / "annotated.onnx"
    annotated.write_bytes(model.read_bytes())
    assert main(["-q", "meta", str(annotated), "--preset", "torchvision", "--resize", "warp"]) == 0
    figures = {}
    for name, path in (("plain", model), ("annotated", annotated)):
        run = tmp_path / name
        cam = ["-q", "cam", str(path), str(out.parent / "photos"), "--out", str(run), "--preset", "caffe"]
        assert main([*cam, "--top-k", "2", "--no-overlays"]) == 0
        assert main(["-q", "evaluate", str(run), "--gt", str(gt), "--model", str(path), "--steps", "4"]) == 0
        figures[name] = json.loads((run / "evaluation.json").read_text())["saliency"]
    assert figures["annotated"] == figures["plain"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny random CAM net, two photos, `cam --top-k 2`, and a ground-truth CSV for them."""
    import cv2

    from tests.helpers import convert_text, net_text

    folder = tmp_path_factory.mktemp("evaluate")
    net = net_text(
        (1, 3, 32, 32),
        """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
    )
    _, _, model = convert_text(folder, net, seed=4, expose_all=False)
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1", "p2"):
        cv2.imwrite(str(photos / f"{name}.png"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    out = folder / "out"
    assert (
        main(["-q", "cam", str(model), str(photos), "--out", str(out), "--top-k", "2", "--no-overlays"]) == 0
    )
    with open(out / "results.csv", newline="") as handle:
        assert {r["image"] for r in csv.DictReader(handle)} == {
            str(photos / "p1.png"),
            str(photos / "p2.png"),
        }
    gt = folder / "gt.csv"
    gt.write_text("image,class,x0,y0,x1,y1\np1.png,0,0,0,49,39\np2.png,2,10,10,30,30\n")
    return out, model, gt


class _ScriptedPipeline:
    """A stand-in for CamPipeline whose net answers from a table: the probability of class 0 is looked up by
    the input's mean pixel (0-255), so the plain photo and the photo times its map get known figures."""

    views = type("OneView", (), {"count": 1, "inputs": staticmethod(lambda image: [image])})()
    input_name = "data"

    def __init__(self, table: dict[int, float], mask: float, shape: tuple[int, int]):
        self.table, self.mask, self.input_hw = table, mask, shape
        self.transformer = type(
            "T", (), {"preprocess": staticmethod(lambda name, view: view.transpose(2, 0, 1))}
        )()

    def net_input(self, image: np.ndarray) -> np.ndarray:
        return self.transformer.preprocess(self.input_name, image)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p0 = [self.table.get(round(float(x.mean()) * 255), 0.5) for x in batch]
        return np.array([[p, 1 - p] for p in p0], np.float32), np.zeros((len(batch), 1, 2, 2), np.float32)

    def maps(self, x, features, probabilities, classes) -> np.ndarray:
        return np.zeros((len(x), classes.shape[1], 2, 2), np.float32)

    def to_image_space(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        return np.full((len(raw), height, width), self.mask, np.float32)


def test_average_drop_and_increase_in_confidence_by_hand(tmp_path):
    """Three grey photos; class 0 is predicted on each (Y), then seen again on the photo x its map of 0.5 (O).
    drop = max(0, Y - O) / Y: 0.8 -> 0.6 gives 0.25; 0.5 -> 0.7 gives 0 (an increase); 0.9 -> 0.45 gives 0.5.
    Average drop (0.25 + 0 + 0.5) / 3 = 25 %; increase in confidence 1 of 3 = 33.3 %."""
    import cv2

    from camcaffe.localize.evaluate import saliency_metrics

    table = {}
    groundtruth, paths = {}, {}
    for name, grey, before, after in (("a", 200, 0.8, 0.6), ("b", 120, 0.5, 0.7), ("c", 40, 0.9, 0.45)):
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), np.full((6, 8, 3), grey, np.uint8))
        table[grey], table[grey // 2] = before, after
        groundtruth[name], paths[name] = [GtObject("0", (0, 0, 7, 5))], str(path)
    pipeline = _ScriptedPipeline(table, 0.5, (6, 8))
    figures = saliency_metrics(pipeline, groundtruth, {"0": frozenset({0})}, paths, steps=2)
    assert figures["images"] == 3
    assert figures["average_drop_percent"] == pytest.approx(25.0, abs=1e-4)
    assert figures["increase_in_confidence_percent"] == pytest.approx(100 / 3, abs=1e-4)
    # a photo whose map changes nothing: no drop, no increase
    single = saliency_metrics(_ScriptedPipeline({200: 0.8}, 1.0, (6, 8)), {"a": groundtruth["a"]},
                              {"0": frozenset({0})}, {"a": paths["a"]}, steps=2)  # fmt: skip
    assert single["average_drop_percent"] == 0.0 and single["increase_in_confidence_percent"] == 0.0
