"""`make demo` on a bare machine: a copy of the repository's Makefile and examples/demo, no ../shared, no network."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SHARED

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
# The top-1 class of every shipped photo, as examples/demo/README.md documents it.
DOCUMENTED_TOP1 = {
    "caffe_cat": (278, "kit fox"),
    "caffe_fish-bike": (428, "barrow"),
    "skimage_chelsea": (285, "Egyptian cat"),
    "skimage_horse": (167, "English foxhound"),
    "skimage_coffee": (967, "espresso"),
}
# Shipped byte for byte as in ../shared/data/images (skimage_coffee was re-encoded as JPEG).
UNCHANGED_PHOTOS = ["caffe_cat", "caffe_fish-bike", "skimage_chelsea", "skimage_horse"]


def _bare_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """The files `make demo` reads, copied away from ../shared, and a stand-in venv running this checkout."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    repo = tmp_path / "clone"
    repo.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(DEMO, repo / "examples" / "demo")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    launcher = venv / "bin" / "camcaffe"
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m camcaffe.cli "$@"\n')
    launcher.chmod(0o755)
    (venv / "bin" / "python").symlink_to(sys.executable)
    installed = venv / ".installed"
    installed.touch()
    later = (repo / "pyproject.toml").stat().st_mtime + 10
    os.utime(installed, (later, later))  # so make takes the stand-in venv as up to date
    return repo, venv


def _make(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "PYTHONPATH")}
    return subprocess.run(
        ["make", "--no-print-directory", *args, "SHARED=/nonexistent"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _top1(results: Path) -> dict[str, tuple[int, str]]:
    with open(results, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["rank"] == "1"]
    return {Path(r["image"]).stem: (int(r["class_index"]), r["label"]) for r in rows}


def test_shipped_demo_files_are_small_and_licensed():
    photos = sorted(p.name for p in (DEMO / "images").iterdir() if p.suffix in (".jpg", ".png"))
    assert 4 <= len(photos) <= 6
    assert {Path(p).stem for p in photos} == set(DOCUMENTED_TOP1)
    assert sum((DEMO / "images" / p).stat().st_size for p in photos) < 1_000_000
    notes = (DEMO / "README.md").read_text(encoding="utf-8")
    assert all(f"`{p}`" in notes for p in photos)
    assert (DEMO / "LICENSE.squeezenet").is_file() and (DEMO / "images" / "LICENSE.BVLC-caffe").is_file()
    labels = (DEMO / "synset_words.txt").read_text(encoding="utf-8").splitlines()
    assert len(labels) == 1000 and labels[278].startswith("n02119789 kit fox")


def test_missing_input_stops_before_the_venv_is_built(tmp_path):
    repo, _ = _bare_checkout(tmp_path)
    fresh_venv = tmp_path / "never-built"
    done = _make(repo, "demo", f"VENV={fresh_venv}", "DEMO_WEIGHTS=nowhere.caffemodel")
    assert done.returncode != 0
    assert "DEMO_WEIGHTS='nowhere.caffemodel' not found" in done.stdout + done.stderr
    assert not fresh_venv.exists()


@pytest.mark.slow
def test_make_demo_runs_from_the_shipped_files_alone(tmp_path):
    repo, venv = _bare_checkout(tmp_path)
    done = _make(repo, "demo", f"VENV={venv}")
    assert done.returncode == 0, done.stdout + done.stderr
    out = repo / "out" / "demo"
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in out.glob("*_cam.png")) == sorted(f"{s}_cam.png" for s in DOCUMENTED_TOP1)
    top1 = _top1(out / "results.csv")
    assert {stem: (index, label.split(",")[0]) for stem, (index, label) in top1.items()} == DOCUMENTED_TOP1
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("next: ") and "cam convert/demo.onnx YOUR_PHOTOS --out out/mine" in last
    _compare_with_real_caffe(out / "results.csv")


def _compare_with_real_caffe(results: Path) -> None:
    """The shipped photos' top-5 and probabilities are what real Caffe computed (when ../shared is here)."""
    stored = SHARED / "golden" / "real_squeezenet_v1.0_dc" / "real_outputs.npz"
    if not stored.is_file():
        return  # a bare clone: the documented top-1 classes were checked above
    golden = np.load(stored)
    with open(results, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for stem in UNCHANGED_PHOTOS:
        caffe = golden[f"{stem}/prob"].ravel()
        ours = sorted(
            (int(r["rank"]), int(r["class_index"]), float(r["probability"]))
            for r in rows
            if Path(r["image"]).stem == stem
        )
        assert [c for _, c, _ in ours] == list(np.argsort(-caffe)[: len(ours)]), stem
        assert max(abs(caffe[c] - p) for _, c, p in ours) < 1e-4, stem


def test_make_convert_embeds_labels_name_txt_and_says_when_there_is_none(tmp_path):
    from camcaffe.convert.random_model import write_random_caffemodel
    from camcaffe.runtime.describe import embedded_labels, model_metadata
    from tests.cli.test_cli import TINY

    repo, venv = _bare_checkout(tmp_path)
    (repo / "prototxt").mkdir()
    (repo / "weights").mkdir()
    (repo / "convert").mkdir()
    (repo / "prototxt" / "tiny.prototxt").write_text(TINY)
    write_random_caffemodel(repo / "prototxt" / "tiny.prototxt", repo / "weights" / "tiny.caffemodel", seed=2)
    done = _make(repo, "convert", f"VENV={venv}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "convert/tiny.onnx: no labels/tiny.txt, so no labels embedded" in done.stdout
    assert embedded_labels(model_metadata(repo / "convert" / "tiny.onnx")) is None
    (repo / "labels").mkdir()
    (repo / "labels" / "tiny.txt").write_text("n00000001 ant\nn00000002 bee\nn00000003 cat\n")
    done = _make(repo, "convert", f"VENV={venv}")  # a new label file makes the model stale
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no labels" not in done.stdout
    labels = embedded_labels(model_metadata(repo / "convert" / "tiny.onnx"))
    assert labels == ["ant", "bee", "cat"] and labels.synsets == ["n00000001", "n00000002", "n00000003"]
