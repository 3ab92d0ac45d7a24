"""The whole `cam` and `evaluate` runs from Python, through the public API in `camcaffe/__init__.py`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import camcaffe
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import CamcaffeError
from tests.engines.test_pipeline import NET


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cam_run")
    (folder / "d.prototxt").write_text(NET)
    write_random_caffemodel(folder / "d.prototxt", folder / "w.caffemodel", seed=5)
    labels = folder / "labels.txt"
    labels.write_text("ant\nbee\ncat\ndog\n")
    camcaffe.convert_files(
        folder / "d.prototxt",
        folder / "w.caffemodel",
        folder / "m.onnx",
        preprocessing=camcaffe.Preprocessing(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0]),
        labels_path=labels,
    )
    return folder / "m.onnx"


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        cv2.imwrite(str(folder / f"p{index}.png"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    return folder


def test_run_cam_from_python_writes_the_run(model, tmp_path):
    photos = _photos(tmp_path / "photos", 3)
    options = camcaffe.CamOptions(model, [str(photos)], tmp_path / "out", top_k=2, quiet=True)
    assert camcaffe.run_cam(options) == 0
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 6 and set(table["rank"]) == {1, 2}
    assert all((tmp_path / "out" / Path(p).name).exists() for p in table["overlay"].dropna())
    settings = json.loads((tmp_path / "out" / "cam_settings.json").read_text())
    assert settings["method"] == "cam" and settings["preprocess"]["raw_scale"] == 255


def test_run_cam_options_are_checked_before_anything_is_written(model, tmp_path):
    photos = _photos(tmp_path / "photos", 1)
    with pytest.raises(CamcaffeError, match="--batch-size"):
        camcaffe.run_cam(camcaffe.CamOptions(model, [str(photos)], tmp_path / "out", batch_size=0))
    assert not (tmp_path / "out").exists()


def test_options_from_a_namespace_take_known_fields_only():
    class Parsed:
        model, inputs, out, top_k, run, command = Path("m.onnx"), ["x"], Path("o"), 3, print, "cam"

    options = camcaffe.CamOptions.from_namespace(Parsed())
    assert options.top_k == 3 and options.method == "cam" and options.out == Path("o")
