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
from tests.cli.test_cli import camcaffe as camcaffe_cli
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


def _interrupted_run(model: Path, photos: Path, out: Path, delay: float) -> tuple[int, str]:
    """`camcaffe cam` on photos, SIGINT `delay` seconds after its first overlay appears."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import default_sigint

    env = {k: v for k, v in os.environ.items() if k != "CAMCAFFE_DEBUG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "camcaffe.cli", "cam", str(model), str(photos), "--out", str(out)]
        + ["--batch-size", "2", "--workers", "2", "--provider", "cpu", "--top-k", "2", "--save-npy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and list(out.glob("*_cam.png"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no overlay appeared"
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr


@pytest.mark.slow
def test_ctrl_c_at_random_moments_keeps_table_and_folder_in_agreement(model, tmp_path):
    """Real SIGINTs at random moments (seeded), so that some land while workers write overlays and maps:
    every overlay and map on disk is listed in results.csv, every listed one exists, nothing half-written."""
    rng = np.random.default_rng(14)
    photos = tmp_path / "photos"
    photos.mkdir()
    big = rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    for index in range(240):
        cv2.imwrite(str(photos / f"p{index:03d}.png"), big)
    interrupted = 0
    for trial, delay in enumerate(rng.uniform(0.0, 0.6, size=5)):
        out = tmp_path / f"out{trial}"
        code, stderr = _interrupted_run(model, photos, out, float(delay))
        assert "Traceback" not in stderr, stderr
        if code == 0:
            continue  # the run finished before the signal: nothing to check here
        interrupted += 1
        assert code == 130 and "interrupted" in stderr, stderr
        table = pd.read_csv(out / "results.csv", keep_default_na=False)
        listed = {Path(p).name for p in table["overlay"] if p}
        assert all((out / name).exists() for name in listed)
        on_disk = {p.name for p in out.glob("*_cam*.png")}
        assert on_disk == listed, f"trial {trial}: unlisted {sorted(on_disk - listed)[:5]}"
        stems_listed = {Path(p).stem for p in table["image"]}
        maps = {p.name[: -len("_cam.npy")] for p in out.glob("*_cam.npy")}
        assert maps == stems_listed, f"trial {trial}: maps {sorted(maps ^ stems_listed)[:5]}"
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert interrupted >= 3, "most runs must be interrupted mid-way for this test to mean anything"


def test_score_prob_is_for_the_gradient_methods(model, tmp_path):
    photos = _photos(tmp_path / "photos", 1)
    options = camcaffe.CamOptions(model, [str(photos)], tmp_path / "out", method="cam", score="prob")
    with pytest.raises(
        CamcaffeError, match="--score prob applies to the gradient methods .* not --method cam"
    ):
        camcaffe.run_cam(options)
    assert not (tmp_path / "out").exists()


def test_gradcam_with_probability_score_keeps_the_probability_column(model, tmp_path):
    photos = _photos(tmp_path / "photos", 2)
    runs = {}
    for score in ("logit", "prob"):
        out = tmp_path / score
        options = camcaffe.CamOptions(model, [str(photos)], out, method="gradcam", score=score, quiet=True)
        assert camcaffe.run_cam(options) == 0
        runs[score] = pd.read_csv(out / "results.csv")
        assert json.loads((out / "cam_settings.json").read_text())["score"] == score
    pd.testing.assert_series_equal(runs["logit"]["probability"], runs["prob"]["probability"])
    assert runs["prob"]["probability"].between(0, 1).all()


def test_std_is_applied_and_recorded(model, tmp_path):
    photos = _photos(tmp_path / "photos", 1)
    tables = {}
    for name, std in (("plain", None), ("std", [0.5, 0.5, 0.5])):
        out = tmp_path / name
        options = camcaffe.CamOptions(model, [str(photos)], out, std=std, save_npy=True, quiet=True)
        assert camcaffe.run_cam(options) == 0
        tables[name] = pd.read_csv(out / "results.csv")
        assert json.loads((out / "cam_settings.json").read_text())["preprocess"]["std"] == std
    assert not np.allclose(tables["plain"]["probability"], tables["std"]["probability"])


def test_presets_fill_only_the_flags_not_given(model, tmp_path):
    from camcaffe.engines.cam_run import apply_preset

    filled = apply_preset(camcaffe.CamOptions(model, [], tmp_path, preset="torchvision", raw_scale=255.0))
    assert (
        filled.raw_scale == 255.0 and filled.std == [0.229, 0.224, 0.225] and filled.resize == "torchvision"
    )
    caffe = apply_preset(camcaffe.CamOptions(model, [], tmp_path, preset="caffe"))
    assert (
        caffe.mean == [104.0, 117.0, 123.0]
        and caffe.channel_swap == [2, 1, 0]
        and caffe.resize_filter == "caffe"
    )
    keras = apply_preset(
        camcaffe.CamOptions(model, [], tmp_path, preset="keras-vgg", mean_file=tmp_path / "m.npy")
    )
    assert keras.mean is None and keras.resize_filter == "pil-nearest"  # --mean-file is the user's mean
    with pytest.raises(CamcaffeError, match="--preset keras: unknown"):
        apply_preset(camcaffe.CamOptions(model, [], tmp_path, preset="keras"))


def test_a_filter_recorded_without_a_resize_holds_for_an_explicit_warp(model, tmp_path):
    """`meta --resize-filter pil-bicubic` records no resize (warp by default): `--resize warp` keeps the
    recorded filter, another resize takes its own unless --resize-filter names one."""
    from camcaffe.convert.meta import metadata_changes, update_metadata
    from camcaffe.engines.cam_run import settle_preprocessing
    from camcaffe.runtime.session import ModelSession

    annotated = tmp_path / "bicubic.onnx"
    annotated.write_bytes(model.read_bytes())
    update_metadata(annotated, metadata_changes(annotated, settings={"resize_filter": "pil-bicubic"}))
    session = ModelSession(annotated, "cpu")
    for resize, expected in ((None, "pil-bicubic"), ("warp", "pil-bicubic"), ("crop", None)):
        settled = settle_preprocessing(camcaffe.CamOptions(annotated, [], tmp_path, resize=resize), session)
        assert (settled.resize, settled.resize_filter) == (resize or "warp", expected), resize


def test_a_0_255_mean_on_0_1_pixels_is_warned(model, tmp_path):
    from camcaffe.engines.cam_run import unscaled_mean_warning
    from camcaffe.engines.pipeline import Preprocess

    assert "--raw-scale 255" in unscaled_mean_warning(Preprocess(mean=[104.0, 117.0, 123.0]))
    assert unscaled_mean_warning(Preprocess(mean=[104.0, 117.0, 123.0], raw_scale=255.0)) is None
    assert unscaled_mean_warning(Preprocess(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])) is None
    result = camcaffe_cli(
        "cam", model, _photos(tmp_path / "photos", 1), "--out", tmp_path / "out", "--raw-scale", "1"
    )
    assert result.returncode == 0 and "warning" not in result.stderr  # 104 on 0-1 pixels *with* a raw scale
    result = camcaffe_cli(
        "cam", model, tmp_path / "photos", "--out", tmp_path / "out2", "--mean", "104,117,123"
    )
    assert result.returncode == 0 and "no raw scale is set" not in result.stderr  # the model records 255


@pytest.mark.parametrize("preset", ["torchvision", "keras-vgg"])
def test_ten_crops_with_a_preset_that_resizes_otherwise_names_the_preset(model, tmp_path, preset):
    options = camcaffe.CamOptions(
        model, [str(_photos(tmp_path / "photos", 1))], tmp_path / "out", crops=10, preset=preset
    )
    with pytest.raises(CamcaffeError, match=f"--crops 10 cuts its crops .* but --preset {preset} resizes"):
        camcaffe.run_cam(options)
    assert not (tmp_path / "out").exists()
    camcaffe.run_cam(
        camcaffe.CamOptions(
            model, [str(tmp_path / "photos")], tmp_path / "ok", crops=10, preset="caffe", quiet=True
        )
    )
    assert (tmp_path / "ok" / "results.csv").exists()
