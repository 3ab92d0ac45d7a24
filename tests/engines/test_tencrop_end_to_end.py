"""`--crops 10` end to end: maps and boxes of several images, classes and crops, against a merge written out
here with numpy as the README (and the CAM authors' MATLAB code) describe it.

For each photo: resize to 256 x 256, crops at the four corners and the centre, then the same five mirrored
(caffe.io.oversample's order); classes ranked on the mean of the ten probability vectors; for each class and
crop the CAM rows W[c] . F; each crop map resized to the crop, mirrored ones flipped back, |values| summed at
each crop's place on the 256 x 256 canvas, the canvas resized over the photo and divided by its maximum.
Several photos go through one batch, so a class list expanded over the views in the wrong order (each crop
given another photo's classes) changes the maps."""

from __future__ import annotations

import csv
import sys

import cv2
import numpy as np
import pytest

from camcaffe.caffe.caffemodel import write_caffemodel
from camcaffe.cli import main
from camcaffe.convert.api import convert_files
from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
from camcaffe.localize.boxes import box_from_cam, dt_boxes  # dt: the authors' boxes less the inverted ones
from camcaffe.runtime.preprocess import load_image, resize_image
from camcaffe.runtime.session import ModelSession
from tests.helpers import convert_text, net_text, run_onnx, shared_path

BASE = 256
MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)


# --- the merge, by hand ---------------------------------------------------------------------------------------
def ten_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    """caffe.io.oversample of the 256 resize, sliced here: TL, TR, BL, BR, centre, then their mirrors."""
    resized = resize_image(image, (BASE, BASE))
    places = crop_places(size)
    crops = [resized[top : top + size, left : left + size] for top, left in places]
    return crops + [crop[:, ::-1] for crop in crops]


def crop_places(size: int) -> list[tuple[int, int]]:
    far, centre = BASE - size, (BASE - size) // 2
    return [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]


def caffe_input(crop: np.ndarray) -> np.ndarray:
    """Transformer with the ImageNet defaults: RGB [0, 1] H x W x 3 -> BGR 0-255 minus the mean, C x H x W."""
    return (crop[:, :, ::-1] * 255.0 - MEAN_BGR).transpose(2, 0, 1).astype(np.float32)


def merge_by_hand(cams: np.ndarray, height: int, width: int, crop: int) -> np.ndarray:
    """cams (10, h, w) of one class, from crop x crop inputs -> the (height, width) merged map in [0, 1]."""
    canvas = np.zeros((BASE, BASE), np.float64)
    for view, cam in enumerate(cams):
        resized = cv2.resize(cam.astype(np.float32), (crop, crop), interpolation=cv2.INTER_LINEAR)
        if view >= 5:
            resized = resized[:, ::-1]
        top, left = crop_places(crop)[view % 5]
        canvas[top : top + crop, left : left + crop] += np.abs(resized)
    merged = cv2.resize(canvas.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return merged / merged.max()


def expected_for(photo: np.ndarray, probabilities: np.ndarray, features: np.ndarray, weights: np.ndarray,
                 top_k: int, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(classes, raw maps (10, k, h, w), merged maps (k, H, W)) for one photo's ten views."""
    mean = probabilities.mean(axis=0)
    classes = np.argsort(-mean, kind="stable")[:top_k]
    raw = np.einsum("kc,vchw->vkhw", weights[classes].astype(np.float64), features.astype(np.float64))
    merged = np.stack([merge_by_hand(raw[:, j], *photo.shape[:2], crop) for j in range(top_k)])
    return classes, raw, merged


def assert_rows_match(outcome, classes, mean_probabilities, raw, merged, pipeline, boxer) -> None:
    assert outcome.error is None
    assert [r["class_index"] for r in outcome.rows] == classes.tolist()
    for row, c in zip(outcome.rows, classes, strict=True):
        assert row["probability"] == pytest.approx(float(mean_probabilities[c]), rel=1e-5, abs=1e-7)
    assert outcome.cams.shape == raw.shape
    scale = float(np.abs(raw).max())
    np.testing.assert_allclose(outcome.cams, raw, rtol=0, atol=1e-4 * scale)
    ours = pipeline.to_image_space(outcome.cams, *merged.shape[1:])
    np.testing.assert_allclose(ours, merged, rtol=0, atol=2e-5)
    for row, cam in zip(outcome.rows, merged, strict=True):
        boxes = boxer(cam)
        assert (row["x0"], row["y0"], row["x1"], row["y1"]) == boxes[0]
        assert row["boxes"] == ";".join(" ".join(map(str, b)) for b in boxes)


# --- (a) a small random net, every value computed here ---------------------------------------------------------
CROP = 160  # its input size
RANDOM_NET = net_text(
    (1, 3, CROP, CROP),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 6 kernel_size: 8 stride: 8 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)


def photos(folder) -> list:
    """Three photos of different sizes with shapes in different corners (so their crops differ)."""
    rng = np.random.default_rng(7)
    paths = []
    for i, (height, width) in enumerate(((200, 300), (260, 180), (240, 240))):
        picture = np.zeros((height, width, 3), np.uint8)
        picture[:] = rng.integers(30, 220, 3)
        for _ in range(4):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(picture, centre, int(rng.integers(15, 60)), colour, -1)
        picture = cv2.GaussianBlur(picture, (0, 0), 2)
        path = folder / f"photo{i}.png"
        cv2.imwrite(str(path), picture)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tencrop")
    _, weights, onnx_path = convert_text(folder, RANDOM_NET, seed=3)
    fc_weights = weights.record["fc"][1][0]
    paths = photos(folder)
    expected = []
    for path in paths:
        photo = load_image(path)
        batch = np.stack([caffe_input(crop) for crop in ten_crops(photo, CROP)])
        values = run_onnx(onnx_path, {"data": batch}, ["prob", "feat"])
        expected.append((photo, values["prob"].reshape(10, -1), values["feat"]))
    return folder, onnx_path, fc_weights, paths, expected


@pytest.mark.parametrize("boxes", ["threshold", "dt"])
def test_random_net_ten_crops_by_hand(random_run, boxes):
    _, onnx_path, fc_weights, paths, expected = random_run
    session = ModelSession(onnx_path, "cpu")
    preprocess, assumed = preprocess_from_metadata(session, Preprocess())
    assert assumed  # no metadata: the ImageNet defaults, as caffe_input writes them
    top_k = 3
    pipeline = CamPipeline(session, preprocess, CamSettings(top_k=top_k, resize="tencrop", boxes=boxes))
    outcomes = pipeline.process(paths, [p.stem for p in paths], None)  # one batch of three photos
    boxer = (lambda cam: [box_from_cam(cam, 0.2)]) if boxes == "threshold" else dt_boxes
    top_classes = set()
    for outcome, (photo, probabilities, features) in zip(outcomes, expected, strict=True):
        classes, raw, merged = expected_for(photo, probabilities, features, fc_weights, top_k, CROP)
        top_classes.add(tuple(classes))
        assert_rows_match(outcome, classes, probabilities.mean(axis=0), raw, merged, pipeline, boxer)
    assert len(top_classes) >= 2  # the photos rank the classes differently: a mix-up would show


def test_random_net_ten_crops_on_the_command_line(random_run, tmp_path):
    """`camcaffe cam --crops 10 --boxes dt`: the boxes column holds the boxes of the hand-merged maps."""
    _, onnx_path, fc_weights, paths, expected = random_run
    out = tmp_path / "out"
    args = ["-q", "cam", str(onnx_path), *map(str, paths), "--out", str(out), "--crops", "10", "--boxes", "dt",
            "--top-k", "2", "--no-overlays", "--workers", "1", "--provider", "cpu"]  # fmt: skip
    assert main(args) == 0, sys.stderr
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    for i, (photo, probabilities, features) in enumerate(expected):
        classes, _, merged = expected_for(photo, probabilities, features, fc_weights, 2, CROP)
        mine = rows[2 * i : 2 * i + 2]
        assert [int(r["class_index"]) for r in mine] == classes.tolist()
        for row, cam in zip(mine, merged, strict=True):
            assert row["boxes"] == ";".join(" ".join(map(str, b)) for b in dt_boxes(cam))


# --- (b) the authors' stored GoogLeNet-CAM features of img1 and img2 (ten crops each) ---------------------
GOOGLENET_HEAD = net_text(
    (1, 3, 224, 224),
    """
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE kernel_size: 16 stride: 16 } }
layer { name: "CAM_conv" type: "Convolution" bottom: "pool" top: "CAM_conv" convolution_param { num_output: 1024 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "CAM_conv" top: "CAM_conv" }
layer { name: "gap" type: "Pooling" bottom: "CAM_conv" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "CAM_fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 1000 bias_term: false } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)


def test_authors_stored_ten_crop_features(tmp_path, monkeypatch):
    """The net's head carries the real GoogLeNet-CAM classifier; the net's features are replaced by the
    authors' stored 10-crop CAM_conv and prob of img1.jpg and img2.jpg (their demo's own forward pass)."""
    reference = shared_path("data", "cam_reference")
    fc = np.load(reference / "googlenet_cam_fc.npz")["CAM_fc_weight"]
    stored = [np.load(reference / f"googlenet_cam_{name}_features.npz") for name in ("img1", "img2")]
    paths = [reference / "img1.jpg", reference / "img2.jpg"]
    prototxt = tmp_path / "head.prototxt"
    prototxt.write_text(GOOGLENET_HEAD)
    conv = np.random.default_rng(0).normal(0, 0.5, (1024, 3, 1, 1)).astype(np.float32)
    write_caffemodel(tmp_path / "head.caffemodel",
                     [("CAM_conv", "Convolution", [conv, np.zeros(1024, np.float32)]), ("CAM_fc", "InnerProduct", [fc])])  # fmt: skip
    convert_files(prototxt, tmp_path / "head.caffemodel", tmp_path / "head.onnx")
    session = ModelSession(tmp_path / "head.onnx", "cpu")
    preprocess, _ = preprocess_from_metadata(session, Preprocess())
    pipeline = CamPipeline(session, preprocess, CamSettings(top_k=3, classes=["0"], resize="tencrop"))
    assert np.array_equal(pipeline.head.weights, fc)

    def stored_forward(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert batch.shape == (20, 3, 224, 224)  # both photos' ten crops, photo by photo
        return (np.concatenate([s["prob"] for s in stored]).astype(np.float32),
                np.concatenate([s["CAM_conv"] for s in stored]).astype(np.float32))  # fmt: skip

    monkeypatch.setattr(pipeline, "infer", stored_forward)
    outcomes = pipeline.process(paths, ["img1", "img2"], None)
    labels = shared_path("data", "labels", "synset_words.txt").read_text().splitlines()
    for outcome, path, features in zip(outcomes, paths, stored, strict=True):
        photo = load_image(path)
        top, raw_top, merged_top = expected_for(photo, features["prob"], features["CAM_conv"], fc, 3, 224)
        classes = np.append(top, 0)  # --class 0 after the top 3
        raw = np.concatenate([raw_top, np.einsum("c,vchw->vhw", fc[0].astype(np.float64),
                                                 features["CAM_conv"].astype(np.float64))[:, None]], axis=1)  # fmt: skip
        merged = np.concatenate([merged_top, merge_by_hand(raw[:, 3], *photo.shape[:2], 224)[None]])
        box = lambda cam: [box_from_cam(cam, 0.2)]  # noqa: E731
        assert_rows_match(outcome, classes, features["prob"].mean(axis=0), raw, merged, pipeline, box)
    assert labels[outcomes[0].rows[0]["class_index"]] == "n07930864 cup"
    assert outcomes[0].rows[0]["class_index"] != outcomes[1].rows[0]["class_index"]
