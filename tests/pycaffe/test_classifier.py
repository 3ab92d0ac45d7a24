"""caffe.Classifier as BVLC classifier.py: resize to image_dims, 10 crops (mean of their predictions) or the
centre crop; checked with a numpy Caffe oracle on a small net and against REAL Caffe on SqueezeNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.convert.random_model import write_random_caffemodel
from tests import caffe_reference
from tests.helpers import assert_close, shared_path
from tests.pycaffe.test_pycaffe import TINY_NET, caffemodel_arrays

MEAN = np.array([0.4, 0.5, 0.6], np.float32)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_NET)  # input 2 x 3 x 8 x 8
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=3)
    return prototxt, caffemodel


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [
        rng.uniform(0, 1, (13, 11, 3)).astype(np.float32),
        rng.uniform(0, 1, (9, 16, 3)).astype(np.float32),
    ]


def _blob(crop: np.ndarray) -> np.ndarray:
    """The classic preprocessing by hand: CHW, BGR, x255, minus the mean."""
    return (crop.transpose(2, 0, 1)[::-1] * 255.0 - MEAN[:, None, None]).astype(np.float32)


def _classifier(tiny, **kwargs) -> caffe.Classifier:
    prototxt, caffemodel = tiny
    return caffe.Classifier(
        str(prototxt), str(caffemodel), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), **kwargs
    )


def test_ten_crops_are_averaged(tiny) -> None:
    net = _classifier(tiny, image_dims=(10, 12))
    assert isinstance(net, caffe.Net) and list(net.crop_dims) == [8, 8]
    images = _images()
    scores = net.predict(images)
    assert scores.shape == (2, 5)
    weights = caffemodel_arrays(tiny[1])
    for i, image in enumerate(images):
        resized = caffe.io.resize_image(image, (10, 12))
        crops = [resized[y : y + 8, x : x + 8] for y, x in ((0, 0), (0, 4), (2, 0), (2, 4), (1, 2))]
        crops += [crop[:, ::-1] for crop in crops]
        batch = np.stack([_blob(crop) for crop in crops])
        prob = caffe_reference.forward(TINY_NET, weights, {"data": batch})["prob"]
        assert_close(scores[i], prob.mean(0), f"image {i}")


def test_centre_crop_truncates_like_pycaffe(tiny) -> None:
    net = _classifier(tiny, image_dims=(11, 12))
    images = _images()
    scores = net.predict(images, oversample=False)
    # centre (5.5, 6) +- 4 -> rows 1.5..9.5, columns 2..10, truncated to int
    batch = np.stack([_blob(caffe.io.resize_image(image, (11, 12))[1:9, 2:10]) for image in images])
    prob = caffe_reference.forward(TINY_NET, caffemodel_arrays(tiny[1]), {"data": batch})["prob"]
    assert scores.shape == (2, 5)
    assert_close(scores, prob, "centre crop")


def test_default_image_dims_are_the_input_size(tiny) -> None:
    net = _classifier(tiny)
    assert list(net.image_dims) == [8, 8]
    images = _images()[:1]
    batch = np.stack([_blob(caffe.io.resize_image(images[0], (8, 8)))])
    prob = caffe_reference.forward(TINY_NET, caffemodel_arrays(tiny[1]), {"data": batch})["prob"]
    assert_close(net.predict(images, oversample=False), prob, "whole image")


def test_misfit_predict_calls_are_refused(tiny) -> None:
    net = _classifier(tiny, image_dims=(6, 6))
    with pytest.raises(caffe.PycaffeError, match="no images"):
        net.predict([])
    with pytest.raises(caffe.PycaffeError, match="HxWxK"):
        net.predict([np.zeros((8, 8), np.float32)])
    with pytest.raises(caffe.PycaffeError, match="smaller than the net's input"):
        net.predict(_images())


@pytest.mark.parametrize("stem", ["caffe_cat", "skimage_coffee"])
def test_centre_crop_prediction_equals_real_caffe(stem: str) -> None:
    models = shared_path("data", "models", "squeezenet_v1.0")
    golden = np.load(shared_path("golden", "real_squeezenet_v1.0_dc", "real_outputs.npz"))
    images = {Path(str(rel)).stem: str(rel) for rel in golden["images"]}
    image = caffe.io.load_image(shared_path("data", images[stem]))
    net = caffe.Classifier(
        str(models / "deploy_deepscale_names.prototxt"),
        str(models / "weights_deepscale_names.caffemodel"),
        image_dims=(227, 227),
        mean=np.array([104, 117, 123]),
        raw_scale=255,
        channel_swap=(2, 1, 0),
    )
    scores = net.predict([image], oversample=False)
    expected = golden[f"{stem}/prob"]
    assert scores.shape == expected.shape
    assert_close(scores, expected, stem)
