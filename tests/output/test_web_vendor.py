"""onnxruntime-web's files for `camcaffe web`: the pinned tarball is checked before anything is unpacked, and the
folder the command reads is found, checked and named in one-line errors. No network here: the tarball is
built in the test."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from camcaffe.errors import CamcaffeError, InputFileError
from camcaffe.output import web_vendor


def tarball(extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        files = {f"package/dist/{n}": f"// {n}".encode() for n in web_vendor.files_needed(True)}
        files.update(extra or {})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_the_pinned_tarball_is_unpacked_with_its_version(tmp_path, monkeypatch):
    data = tarball({"package/dist/../../evil.js": b"x"})
    monkeypatch.setattr(web_vendor, "INTEGRITY", integrity(data))
    folder = tmp_path / "cache" / "ort"
    web_vendor.extract(data, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*web_vendor.files_needed(True), "VERSION.json"]
    )
    assert json.loads((folder / "VERSION.json").read_text())["version"] == web_vendor.VERSION
    assert not (tmp_path / "evil.js").exists()
    web_vendor.check_vendor_dir(folder)
    assert [p.name for p in folder.parent.iterdir()] == ["ort"]  # no scratch folder left


def test_a_tarball_that_is_not_the_pinned_one_is_refused_before_unpacking(tmp_path):
    with pytest.raises(CamcaffeError, match="does not match its pinned sha512"):
        web_vendor.extract(tarball(), tmp_path / "ort")
    assert not (tmp_path / "ort").exists()


def test_the_pin_is_a_sha512_integrity_of_the_named_version():
    assert web_vendor.VERSION == "1.30.0"
    assert (
        web_vendor.INTEGRITY.startswith("sha512-") and len(base64.b64decode(web_vendor.INTEGRITY[7:])) == 64
    )


def test_folders_without_the_files_or_of_another_version_are_refused(tmp_path):
    with pytest.raises(InputFileError, match="make web"):
        web_vendor.check_vendor_dir(tmp_path / "absent")
    folder = tmp_path / "ort"
    folder.mkdir()
    for name in web_vendor.WASM_FILES:
        (folder / name).write_text("x")
    web_vendor.check_vendor_dir(folder, webgpu=False)
    with pytest.raises(InputFileError, match=r"ort\.webgpu\.min\.js"):
        web_vendor.check_vendor_dir(folder, webgpu=True)
    (folder / "VERSION.json").write_text(json.dumps({"version": "1.18.0"}))
    with pytest.raises(InputFileError, match="1.18.0"):
        web_vendor.check_vendor_dir(folder, webgpu=False)


def test_the_default_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(web_vendor.ENV_DIR, str(tmp_path / "mine"))
    assert web_vendor.default_dir() == tmp_path / "mine"
    monkeypatch.delenv(web_vendor.ENV_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert (
        web_vendor.default_dir() == tmp_path / "cache" / "camcaffe" / f"onnxruntime-web-{web_vendor.VERSION}"
    )


def test_fetch_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(web_vendor.shutil, "which", lambda name: None)
    with pytest.raises(CamcaffeError, match="needs npm"):
        web_vendor.fetch(tmp_path / "ort", log=lambda text: None)
    assert not Path(tmp_path / "ort").exists()
