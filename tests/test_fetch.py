"""`make weights`: the manifest fetcher, exercised against local file:// sources."""

from __future__ import annotations

import hashlib
import json

import pytest

from camcaffe.errors import CamcaffeError
from camcaffe.fetch import fetch, main, read_manifest


def _manifest(tmp_path, payload: bytes, digest: str | None):
    source = tmp_path / "mirror" / "model.caffemodel"
    source.parent.mkdir()
    source.write_bytes(payload)
    project = tmp_path / "project"
    (project / "weights").mkdir(parents=True)
    manifest = project / "weights" / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "files": [
                    {"name": "m", "url": source.as_uri(), "sha256": digest, "target": "weights/m.caffemodel"}
                ]
            }
        )
    )
    return manifest, project / "weights" / "m.caffemodel"


def test_download_with_matching_digest(tmp_path):
    payload = b"weights" * 1000
    manifest, target = _manifest(tmp_path, payload, hashlib.sha256(payload).hexdigest())
    assert main([str(manifest)]) == 0
    assert target.read_bytes() == payload
    assert fetch(read_manifest(manifest)[0]) == "present"


def test_digest_mismatch_installs_nothing(tmp_path, capsys):
    manifest, target = _manifest(tmp_path, b"tampered", "0" * 64)
    assert main([str(manifest)]) == 1
    assert "not installed" in capsys.readouterr().err
    assert not target.exists() and not list(target.parent.glob(".*part*"))


def test_unknown_digest_needs_explicit_consent(tmp_path, monkeypatch):
    manifest, target = _manifest(tmp_path, b"abc", None)
    with pytest.raises(CamcaffeError, match="CAMCAFFE_ALLOW_UNVERIFIED"):
        fetch(read_manifest(manifest)[0])
    assert fetch(read_manifest(manifest)[0], allow_unverified=True) == "downloaded" and target.exists()


def test_unreachable_source_is_one_clear_error(tmp_path):
    manifest, _ = _manifest(tmp_path, b"x", None)
    entry = read_manifest(manifest)[0]
    entry.url = (tmp_path / "gone.caffemodel").as_uri()
    with pytest.raises(CamcaffeError, match="cannot download"):
        fetch(entry, allow_unverified=True)


def test_project_manifest_is_valid():
    from pathlib import Path

    entries = read_manifest(Path(__file__).resolve().parents[1] / "weights" / "manifest.json")
    assert {e.name for e in entries} >= {"googlenet_cam", "squeezenet_v1.1"}
    assert all(e.target.parent.name in ("weights", "prototxt") for e in entries)
