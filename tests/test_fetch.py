"""`make weights`: the manifest fetcher, exercised against local file:// sources."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from camcaffe.errors import CamcaffeError
from camcaffe.fetch import fetch, file_digests, main, read_manifest
from tests.helpers import shared_path


def _manifest(tmp_path, payload: bytes, digest: str | None, **digests: str):
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
                    {
                        "name": "m",
                        "url": source.as_uri(),
                        "sha256": digest,
                        "target": "weights/m.caffemodel",
                        **digests,
                    }
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
    with pytest.raises(CamcaffeError, match="REFUSED.*CAMCAFFE_ALLOW_UNVERIFIED"):
        fetch(read_manifest(manifest)[0])
    assert not target.exists()
    assert fetch(read_manifest(manifest)[0], allow_unverified=True) == "downloaded" and target.exists()


def test_unreachable_source_is_one_clear_error(tmp_path):
    manifest, _ = _manifest(tmp_path, b"x", None)
    entry = read_manifest(manifest)[0]
    entry.url = (tmp_path / "gone.caffemodel").as_uri()
    with pytest.raises(CamcaffeError, match="cannot download"):
        fetch(entry, allow_unverified=True)


def test_published_sha1_pins_a_download(tmp_path):
    payload = b"caffemodel bytes" * 100
    manifest, target = _manifest(tmp_path, payload, None, sha1=hashlib.sha1(payload).hexdigest())
    assert fetch(read_manifest(manifest)[0]) == "downloaded" and target.read_bytes() == payload


def test_wrong_sha1_is_not_installed(tmp_path):
    manifest, target = _manifest(tmp_path, b"changed upstream", None, sha1="1" * 40)
    with pytest.raises(CamcaffeError, match="sha1 .* not installed"):
        fetch(read_manifest(manifest)[0])
    assert not target.exists()


def test_git_blob_id_is_what_git_computes(tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    payload = b"blob content\n" * 50
    sample = tmp_path / "sample.bin"
    sample.write_bytes(payload)
    expected = subprocess.run([git, "hash-object", str(sample)], capture_output=True, text=True, check=True)
    assert file_digests(sample)["git_blob_sha1"] == expected.stdout.strip()
    manifest, target = _manifest(tmp_path, payload, None, git_blob_sha1=expected.stdout.strip())
    assert fetch(read_manifest(manifest)[0]) == "downloaded" and target.exists()


def test_every_given_digest_must_match(tmp_path):
    payload = b"abc" * 10
    manifest, target = _manifest(tmp_path, payload, hashlib.sha256(payload).hexdigest(), sha1="2" * 40)
    with pytest.raises(CamcaffeError, match="sha1"):
        fetch(read_manifest(manifest)[0])
    assert not target.exists()


def test_malformed_digest_is_refused_when_reading(tmp_path):
    manifest, _ = _manifest(tmp_path, b"x", "ABC")
    with pytest.raises(CamcaffeError, match="entry 'm' has sha256 'ABC'"):
        read_manifest(manifest)


def test_present_file_with_wrong_digest_is_reported(tmp_path):
    manifest, target = _manifest(tmp_path, b"x", "3" * 64)
    target.write_bytes(b"something else")
    with pytest.raises(CamcaffeError, match="exists but its sha256"):
        fetch(read_manifest(manifest)[0])


def _project_manifest():
    return read_manifest(Path(__file__).resolve().parents[1] / "weights" / "manifest.json")


def test_project_manifest_is_valid():
    entries = _project_manifest()
    assert {e.name for e in entries} >= {
        "googlenet_cam",
        "squeezenet_v1.0",
        "squeezenet_v1.1",
        "bvlc_alexnet",
    }
    assert all(e.target.parent.name in ("weights", "prototxt") for e in entries)
    unpinned = [str(e.target.relative_to(e.target.parents[1])) for e in entries if not e.digests()]
    # The CAM authors publish no digest for their caffemodel, and we hold no copy of it.
    assert unpinned == ["weights/googlenet_cam.caffemodel"]


@pytest.mark.parametrize(
    "target, shared_file",
    [
        ("prototxt/googlenet_cam.prototxt", "googlenet_cam/deploy.prototxt"),
        ("prototxt/squeezenet_v1.0.prototxt", "squeezenet_v1.0/deploy_deepscale_names.prototxt"),
        ("prototxt/squeezenet_v1.1.prototxt", "squeezenet_v1.1/deploy.prototxt"),
        ("prototxt/bvlc_alexnet.prototxt", "bvlc_alexnet/deploy.prototxt"),
    ],
)
def test_pinned_digests_match_the_reference_copies(target, shared_file):
    copy = shared_path("data", "models", *shared_file.split("/"))
    entry = next(e for e in _project_manifest() if str(e.target).endswith(target))
    assert file_digests(copy)["sha256"] == entry.sha256
