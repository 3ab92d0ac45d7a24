"""Expanding the `cam` command's inputs: files, folders, globs and manifests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from camcaffe.engines.inputs import expand_inputs, output_stems
from camcaffe.errors import InputFileError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("a/1.png", "a/2.jpg", "a/sub/3.png", "b/4.png", "b/notes.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path


def test_folders_globs_and_files_in_stable_order(tree):
    paths, problems = expand_inputs([tree / "a", str(tree / "b" / "*.png"), tree / "a" / "1.png"])
    assert paths == [tree / "a/1.png", tree / "a/2.jpg", tree / "a/sub/3.png", tree / "b/4.png"]
    assert problems == []
    _, problems = expand_inputs([str(tree / "none*.png")])
    assert problems and "no file matches" in problems[0]


def test_csv_manifest_resolves_relative_paths_against_its_folder(tree, monkeypatch):
    manifest = tree / "lists" / "m.csv"
    manifest.parent.mkdir()
    pd.DataFrame(
        {"label": ["x", "y", "z", "w"], "path": ["../a/2.jpg", "", str(tree / "b/4.png"), "../gone.png"]}
    ).to_csv(manifest, index=False)
    monkeypatch.chdir(tree / "b")  # relative to the manifest, not to the working folder
    paths, problems = expand_inputs([manifest, tree / "a" / "2.jpg"])
    assert paths == [
        tree / "lists/../a/2.jpg",
        tree / "b/4.png",
        tree / "lists/../gone.png",
        tree / "a/2.jpg",
    ]
    assert problems == []
    assert output_stems(paths) == ["2", "4", "gone", "2_2"]


def test_parquet_manifest(tree):
    pytest.importorskip("pyarrow", reason="Parquet manifests need pyarrow (installed with camcaffe[ray])")
    manifest = tree / "m.parquet"
    pd.DataFrame({"path": ["a/1.png", "a/sub/3.png"]}).to_parquet(manifest)
    paths, _ = expand_inputs([manifest])
    assert paths == [tree / "a/1.png", tree / "a/sub/3.png"]


def test_manifest_without_path_column_names_the_file(tree):
    manifest = tree / "m.csv"
    manifest.write_text("file,label\na/1.png,cat\n")
    with pytest.raises(
        InputFileError, match=r"m\.csv: manifest has no 'path' column \(columns: file, label\)"
    ):
        expand_inputs([manifest])


def test_empty_and_broken_manifests(tree):
    empty = tree / "empty.csv"
    empty.write_text("path\n")
    paths, problems = expand_inputs([empty])
    assert paths == [] and "manifest lists no images" in problems[0]
    broken = tree / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(InputFileError, match=r"broken\.parquet: .*(manifest|pyarrow)"):
        expand_inputs([broken])
