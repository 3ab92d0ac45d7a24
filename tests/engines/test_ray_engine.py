"""`camcaffe cam --engine ray` on a local Ray instance (2 CPUs, loopback only) started once for the module:
same rows as the local engine, a worker killed mid-run, resuming an interrupted job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

# A local Ray serves on the loopback address only (read when Ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'camcaffe[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'camcaffe[ray]')")

from camcaffe.cli import main  # noqa: E402
from camcaffe.convert.api import Preprocessing, convert_files  # noqa: E402
from camcaffe.convert.random_model import write_random_caffemodel  # noqa: E402
from camcaffe.engines.pipeline import RESULT_COLUMNS  # noqa: E402
from camcaffe.engines.ray_engine import DELAY_ENV, KILL_ENV, KILL_MARKER, plan_workers  # noqa: E402
from camcaffe.engines.shards import shard_files  # noqa: E402
from camcaffe.errors import CamcaffeError  # noqa: E402
from tests.engines.test_pipeline import NET  # noqa: E402
from tests.helpers import default_sigint  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
    pytest.mark.slow,
    pytest.mark.xdist_group("ray"),  # one local Ray instance at a time (make test runs --dist loadgroup)
]
IMAGES = 300
BAD = "broken.jpg"


@pytest.fixture(scope="module")
def local_ray():
    import logging

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.ERROR,
        log_to_driver=False,
        object_store_memory=256 * 1024 * 1024,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_model")
    (folder / "d.prototxt").write_text(NET)
    write_random_caffemodel(folder / "d.prototxt", folder / "w.caffemodel", seed=5)
    (folder / "labels.txt").write_text("ant\nbee\ncat\ndog\n")
    convert_files(
        folder / "d.prototxt",
        folder / "w.caffemodel",
        folder / "m.onnx",
        preprocessing=Preprocessing(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0]),
        labels_path=folder / "labels.txt",
    )
    return folder / "m.onnx"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """IMAGES small photos of varied sizes (some greyscale, some 16-bit) and one file that is no image."""
    folder = tmp_path_factory.mktemp("ray_images")
    rng = np.random.default_rng(7)
    for i in range(IMAGES):
        shape = (24 + i % 13, 30 + (i * 7) % 19) + (() if i % 10 == 3 else (3,))
        pixels = rng.integers(0, 255, shape, dtype=np.uint8)
        if i % 25 == 7:
            pixels = pixels.astype(np.uint16) * 257 + rng.integers(0, 256, shape, dtype=np.uint16)
        cv2.imwrite(str(folder / f"img_{i:04d}.png"), pixels)
    (folder / BAD).write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


@pytest.fixture(scope="module")
def local_result(model, images, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local_out")
    assert main(["-q", "cam", str(model), str(images), "--out", str(out), "--top-k", "2", "--json"]) == 1
    return _results(out)


def _results(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv", keep_default_na=False, dtype=str)


def _cam_ray(model: Path, inputs: list[str], out: Path, *extra: str) -> int:
    return main(
        ["-q", "cam", str(model), *inputs, "--out", str(out), "--top-k", "2", "--engine", "ray", *extra]
    )


def _assert_same_rows(ray_frame: pd.DataFrame, local: pd.DataFrame, ray_out: Path) -> None:
    """Same images in the same order, same classes and boxes, probabilities within 1e-6."""
    assert list(ray_frame.columns) == RESULT_COLUMNS
    assert ray_frame["image"].tolist() == local["image"].tolist()
    exact = [c for c in RESULT_COLUMNS if c not in ("probability", "overlay")]
    pd.testing.assert_frame_equal(ray_frame[exact], local[exact])
    ok = local["error"] == ""
    assert np.allclose(
        ray_frame["probability"][ok].astype(float), local["probability"][ok].astype(float), rtol=0, atol=1e-6
    )
    names = [Path(p).name if p else "" for p in ray_frame["overlay"]]
    assert names == [Path(p).name if p else "" for p in local["overlay"]]
    assert all((ray_out / n).is_file() for n in names if n)


def _shard_rows(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out / "shards")  # pandas reads the shard folder as one table
    assert list(frame.columns) == RESULT_COLUMNS
    return frame


def test_ray_engine_gives_the_local_rows(local_ray, model, images, local_result, tmp_path):
    out = tmp_path / "ray"
    assert _cam_ray(model, [str(images)], out, "--num-workers", "2", "--json") == 1
    _assert_same_rows(_results(out), local_result, out)
    assert (out / "results.json").is_file()
    shards = _shard_rows(out)
    assert shards.groupby("image")["rank"].count().max() == 2  # top-2 rows per image, no repeats
    assert shards["image"].nunique() == IMAGES + 1
    assert shards.loc[shards["error"] != "", "image"].tolist() == [str(images / BAD)]
    assert not [p for p in (out / "shards").iterdir() if p.name.endswith(".tmp")]


def test_killed_worker_is_replaced_and_its_batch_redone(
    local_ray, model, images, local_result, tmp_path, monkeypatch
):
    # The images come from a CSV manifest (relative paths), listed in the same order as the folder.
    manifest = images / "list.csv"
    pd.DataFrame({"path": [Path(p).name for p in local_result["image"].drop_duplicates()]}).to_csv(
        manifest, index=False
    )
    monkeypatch.setenv(KILL_ENV, "4")
    out = tmp_path / "ray_killed"
    assert _cam_ray(model, [str(manifest)], out, "--num-workers", "2") == 1
    marker = out / "shards" / KILL_MARKER
    assert marker.is_file(), "the test hook did not kill a worker"
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):  # that actor process is gone
        os.kill(pid, 0)
    _assert_same_rows(_results(out), local_result, out)
    shards = _shard_rows(out)
    per_image = shards.groupby("image").size()
    assert len(per_image) == IMAGES + 1 and per_image.drop(str(images / BAD)).eq(2).all()


def test_rerun_finishes_only_the_missing_images(local_ray, model, images, local_result, tmp_path):
    out = tmp_path / "ray_resume"
    assert _cam_ray(model, [str(images)], out, "--num-workers", "1", "--batch-size", "16") == 1
    first = _results(out)
    # Interrupt after the fact: lose a third of the shards and results.csv; leave a partial write behind.
    shards = shard_files(out / "shards")
    lost = shards[::3]
    lost_images = set()
    for path in lost:
        lost_images |= set(pd.read_parquet(path)["image"])
        path.unlink()
    (out / "results.csv").unlink()
    (out / "shards" / f".{lost[0].name}.abc.tmp").write_bytes(b"PAR1 half")
    old = time.time() - 3600
    overlays = {str(images / BAD): None}
    for image, overlay in zip(first["image"], first["overlay"], strict=True):
        if overlay:
            os.utime(overlay, (old, old))
            overlays.setdefault(image, overlay)
    assert _cam_ray(model, [str(images)], out, "--num-workers", "1", "--batch-size", "16") == 1
    redone = {
        image for image, overlay in overlays.items() if overlay and os.stat(overlay).st_mtime > old + 60
    }
    assert redone == lost_images - {str(images / BAD)}
    assert len(redone) >= IMAGES // 4
    pd.testing.assert_frame_equal(_results(out), first)
    _assert_same_rows(_results(out), local_result, out)
    # A third run has nothing to do but the image that cannot be read.
    assert _cam_ray(model, [str(images)], out, "--num-workers", "1") == 1
    pd.testing.assert_frame_equal(_results(out), first)


def test_interrupted_run_then_rerun_on_the_cluster_address(local_ray, model, images, local_result, tmp_path):
    """Ctrl-C in a `camcaffe cam --engine ray --address ...` process joined to the test's Ray: exit 130 with
    results.csv listing what was finished; the rerun does only the rest."""
    out = tmp_path / "ray_interrupted"
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "camcaffe.cli", "-q", "cam", str(model), str(images), "--out", str(out)]
    command += ["--top-k", "2", "--engine", "ray", "--address", address, "--num-workers", "1"]
    env = {**os.environ, DELAY_ENV: "0.15"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 60
    while len(shard_files(out / "shards")) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted;" in err and "rerun the same command" in err
    partial = _results(out)
    finished = set(partial["image"])
    shard_images = set(pd.read_parquet(out / "shards")["image"]) if shard_files(out / "shards") else set()
    # A batch in flight at Ctrl-C may still land in a shard after results.csv was written: the rerun takes it.
    assert finished <= shard_images and len(shard_images - finished) <= 2 * 8 and 0 < len(finished) < IMAGES
    assert _cam_ray(model, [str(images)], out, "--num-workers", "1", "--address", address) == 1
    _assert_same_rows(_results(out), local_result, out)
    per_image = _shard_rows(out).groupby("image").size()
    assert len(per_image) == IMAGES + 1 and per_image.drop(str(images / BAD)).eq(2).all()


def test_shards_of_another_job_are_refused(model, images, tmp_path, capsys):
    out = tmp_path / "other"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "_job.json").write_text('{"model_sha256": "0"}')
    assert _cam_ray(model, [str(images)], out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds results of another job" in err[0] and "model_sha256" in err[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-workers", "0"], "--num-workers must be a positive integer, got 0"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker must be positive, got -1"),
    ],
)
def test_bad_flags_are_one_line_errors(model, images, tmp_path, capsys, flags, message):
    assert _cam_ray(model, [str(images)], tmp_path / "out", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"camcaffe: error: {message}"]


def test_worker_plan_and_its_errors():
    assert plan_workers({"CPU": 2.0}, "auto", None, None) == (1, 1.0, 0.0, 1)
    assert plan_workers({"CPU": 2.0}, "auto", 2, None) == (2, 0.5, 0.0, 1)
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, "auto", None, None) == (4, 1.0, 1.0, 2)
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, "auto", None, 0.5)[:3] == (8, 1.0, 0.5)
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, "cpu", None, None) == (4, 2.0, 0.0, 2)
    with pytest.raises(
        CamcaffeError, match=r"--gpus-per-worker 1 x 2 worker\(s\) needs 2 GPU\(s\) but the Ray cluster has 0"
    ):
        plan_workers({"CPU": 2.0}, "auto", 2, 1.0)
    with pytest.raises(CamcaffeError, match="--num-workers must be a positive integer, got 0"):
        plan_workers({"CPU": 2.0}, "auto", 0, None)


def test_ray_engine_on_a_model_of_variable_size(local_ray, images, tmp_path):
    """Each image at its own size (a model with a variable height/width, no --input-size): decode tasks ship
    inputs of several sizes, actors run them size by size, and the rows are the local engine's."""
    from tests.engines.test_model_inputs import _cam_model

    variable = _cam_model(tmp_path / "variable.onnx", ["N", 3, "H", "W"])
    chosen = [str(images / f"img_{i:04d}.png") for i in range(12)] + [str(images / BAD)]
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    assert main(["-q", "cam", str(variable), *chosen, "--out", str(local_out), "--top-k", "2"]) == 1
    assert _cam_ray(variable, chosen, ray_out, "--num-workers", "1", "--batch-size", "4") == 1
    local = _results(local_out)
    assert local["image"].nunique() == 13 and (local["error"] != "").sum() == 1
    _assert_same_rows(_results(ray_out), local, ray_out)
