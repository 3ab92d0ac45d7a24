"""tests/as_non_root.py denies what the kernel denies an ordinary owner, whoever runs the tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.as_non_root import install_with


def test_permission_bits_are_enforced(tmp_path, monkeypatch):
    secret, locked = tmp_path / "secret.txt", tmp_path / "locked"
    secret.write_text("x")
    locked.mkdir()
    (locked / "inside.txt").write_text("y")
    secret.chmod(0)
    locked.chmod(0o555)
    install_with(monkeypatch)
    try:
        assert not os.access(secret, os.R_OK) and os.access(secret, os.F_OK)
        assert not os.access(locked, os.W_OK) and os.access(locked, os.R_OK | os.X_OK)
        with pytest.raises(PermissionError):
            secret.read_text()
        with pytest.raises(PermissionError):
            open(secret, "rb")  # noqa: SIM115
        with pytest.raises(PermissionError):
            tempfile.mkstemp(dir=locked)
        with pytest.raises(PermissionError):
            (locked / "new.txt").write_text("z")
        with pytest.raises(PermissionError):
            os.replace(tmp_path / "elsewhere", locked / "moved")
        with pytest.raises(PermissionError):
            (locked / "inside.txt").unlink()
        assert (locked / "inside.txt").read_text() == "y"  # reading in a read-only folder is fine
        (tmp_path / "free.txt").write_text("ok")  # and writing where the bits allow it
    finally:
        secret.chmod(0o644)
        locked.chmod(0o755)
    assert secret.read_text() == "x" and not list(Path(locked).glob("new*"))
