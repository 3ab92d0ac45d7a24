"""`.ci/run` under CI=true stops when the browser or Ray cannot be installed (their tests would only skip),
and only warns elsewhere. Run against stub tools: nothing is installed and the suite is not started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CI_REQUIRED

RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _ci_run(tmp_path: Path, ci: bool, chromium: bool, apt_ok: bool, ray_ok: bool) -> tuple[int, str, str]:
    """.ci/run with PATH holding only stubs: apt-get, make (logs its target), the venv's python (pip)."""
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    log = tmp_path / "log"
    for tool in ("id", "dirname"):
        os.symlink(os.path.realpath(shutil.which(tool)), bin_dir / tool)
    os.symlink(os.path.realpath(sys.executable), bin_dir / "python3")
    if chromium:
        _stub(bin_dir, "chromium", "exit 0")
    install = f'ln -s /bin/true "{bin_dir}/chromium"' if apt_ok else "exit 100"
    _stub(bin_dir, "apt-get", f'case "$1" in update) exit 0;; esac; {install}')
    _stub(bin_dir, "make", f'echo "make $*" >> "{log}"')
    _stub(venv / "bin", "python", "exit 0" if ray_ok else 'echo "pip: no Ray wheel" >&2; exit 1')
    env = {"PATH": str(bin_dir), "VENV": str(venv), "TF_VENV": str(venv), "HOME": str(tmp_path)}
    if ci:
        env["CI"] = "true"
    done = subprocess.run(["/bin/bash", str(RUN)], capture_output=True, text=True, env=env, timeout=60)
    return done.returncode, log.read_text() if log.exists() else "", done.stderr


needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the script installs chromium only as root"
)


@needs_root
def test_ci_true_fails_when_chromium_cannot_be_installed(tmp_path):
    code, made, err = _ci_run(tmp_path, ci=True, chromium=False, apt_ok=False, ray_ok=True)
    assert code != 0 and "could not install chromium" in err and "make test" not in made


def test_ci_true_fails_without_chromium_or_ray(tmp_path):
    code, made, err = _ci_run(tmp_path / "a", ci=True, chromium=True, apt_ok=True, ray_ok=False)
    assert code != 0 and "camcaffe[ray]" in err and "make test" not in made
    code, made, _ = _ci_run(tmp_path / "b", ci=True, chromium=True, apt_ok=True, ray_ok=True)
    assert code == 0 and made.splitlines() == ["make setup", "make web", "make test"]


def test_outside_ci_missing_tools_only_warn(tmp_path):
    code, made, err = _ci_run(tmp_path, ci=False, chromium=False, apt_ok=False, ray_ok=False)
    assert code == 0 and "make test" in made
    assert "chromium" in err and "camcaffe[ray]" in err and "skipped" in err


def test_conftest_names_the_tools_ci_needs():
    """The skip reasons of the browser and Ray tests are the ones tests/conftest.py turns into failures."""
    assert CI_REQUIRED.search("no chromium binary on PATH (Debian: apt-get install chromium)")
    assert CI_REQUIRED.search("Ray is not installed (pip install 'camcaffe[ray]')")
    assert CI_REQUIRED.search("Parquet manifests need pyarrow (installed with camcaffe[ray])")
    assert CI_REQUIRED.search("onnxruntime-web 1.30.0 files not found in /x; run 'make web' (npm, network)")
    assert not CI_REQUIRED.search("../shared/data not present (../shared reference data is only on CI)")
    assert not CI_REQUIRED.search("this OpenCV build does not decode CMYK JPEG files (array)")


def test_ci_true_turns_a_browser_skip_into_a_failure(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_skips.py").write_text(
        "import pytest\n"
        "def test_browser():\n    pytest.skip('no chromium binary on PATH')\n"
        "def test_shared():\n    pytest.skip('../shared not present')\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    for ci, expected in (("true", "1 failed, 1 skipped"), ("", "2 skipped")):
        env = {**os.environ, "CI": ci}
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert expected in done.stdout, done.stdout[-1500:]
