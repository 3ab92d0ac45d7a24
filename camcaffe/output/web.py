"""The static site of `camcaffe web`: a page that explains images in the browser with onnxruntime-web.

The folder holds index.html, app.js and style.css (from `web_page/`), the model with its in-graph CAM outputs
(model.onnx), config.json (input, preprocessing, output names, labels, box rule, colour map), the mean image
when the model has one (mean.bin, float32 C x H x W at the input size), onnxruntime-web's files under ort/
and VENDOR.txt (their version, origin and hashes). It is written next to its destination and moved there
whole: a failure leaves no half-written site."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camcaffe.errors import CamcaffeError, InputFileError
from camcaffe.output import web_vendor

PAGE_DIR = Path(__file__).with_name("web_page")
PAGE_FILES = ("index.html", "app.js", "style.css")
CONFIG = "config.json"
GENERATOR = "camcaffe web"


@dataclass
class SiteSpec:
    """What goes into a site: the model bytes, the page's settings (config.json) and the runtime files."""

    model: bytes
    config: dict
    vendor_dir: Path
    mean_image: np.ndarray | None = None  # (C, H, W) at the net input size, in the net's channel order
    webgpu: bool = True


def jet_colormap() -> list[list[int]]:
    """OpenCV's COLORMAP_JET as 256 RGB triples, so that the page colours maps as `camcaffe cam` does."""
    import cv2

    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET)[:, 0, :]
    return bgr[:, ::-1].astype(int).tolist()


def is_site(folder: Path) -> bool:
    """Whether `folder` is a site this command wrote (then it may be replaced)."""
    try:
        return json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputFileError(f"{out}: is a file; give a folder for the site (-o site/)")
    if out.is_dir() and any(out.iterdir()) and not is_site(out):
        raise InputFileError(
            f"{out}: folder exists and is not a site camcaffe web wrote; give a new or empty folder"
        )
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputFileError(f"{parent}: output folder's parent does not exist; create it first")


def _vendor_text(spec: SiteSpec, names: tuple[str, ...], folder: Path) -> str:
    lines = [
        f"{web_vendor.PACKAGE} {web_vendor.VERSION} ({web_vendor.LICENSE})",
        f"from the npm registry: npm pack {web_vendor.PACKAGE}@{web_vendor.VERSION}, "
        f"tarball integrity {web_vendor.INTEGRITY}",
        "files (sha256):",
    ]
    lines += [f"  ort/{name}  {web_vendor.sha256_of(folder / name)}" for name in names]
    return "\n".join(lines) + "\n"


def _fill(staging: Path, spec: SiteSpec) -> None:
    for name in PAGE_FILES:
        shutil.copyfile(PAGE_DIR / name, staging / name)
    (staging / "model.onnx").write_bytes(spec.model)
    config = dict(spec.config)
    config["generator"] = GENERATOR
    config["model"] = "model.onnx"
    config["ort_web"] = {"version": web_vendor.VERSION, "webgpu": spec.webgpu}
    config["mean_image"] = None
    if spec.mean_image is not None:
        mean = np.ascontiguousarray(spec.mean_image, dtype="<f4")
        (staging / "mean.bin").write_bytes(mean.tobytes())
        config["mean_image"] = {"file": "mean.bin", "shape": list(mean.shape)}
    (staging / CONFIG).write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    names = web_vendor.files_needed(spec.webgpu)
    (staging / "ort").mkdir()
    for name in names:
        shutil.copyfile(spec.vendor_dir / name, staging / "ort" / name)
    (staging / "VENDOR.txt").write_text(_vendor_text(spec, names, staging / "ort"), encoding="utf-8")


def write_site(out: str | os.PathLike, spec: SiteSpec) -> Path:
    """Write the site to `out` (a new or empty folder, or a site written before, which is replaced)."""
    out = Path(out)
    _check_destination(out)
    web_vendor.check_vendor_dir(spec.vendor_dir, spec.webgpu)
    parent = out.parent if str(out.parent) else Path(".")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    old: Path | None = None
    try:
        try:
            _fill(staging, spec)
            staging.chmod(0o755)
        except OSError as exc:
            raise InputFileError(
                f"{out}: cannot write the site ({exc.strerror or exc}); check space and permissions"
            ) from None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "site")
        try:
            os.replace(staging, out)
        except OSError as exc:
            if old is not None:
                os.replace(old / "site", out)
            raise CamcaffeError(f"{out}: cannot move the site into place ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out
