"""onnxruntime-web for `camcaffe web`: the pinned npm release, where its files are kept, and fetching them.

The page needs two builds of the runtime: the plain WebAssembly one (`ort.wasm.min.js`, loaded when the
browser has no WebGPU adapter) and the WebGPU one (`ort.webgpu.min.js`, whose WebAssembly also runs the CPU
kernels). They come from the npm registry at build time (`make web`, or `camcaffe web --fetch`), checked
against the tarball's pinned sha512 integrity, and are copied into every site: nothing is loaded from a CDN."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from camcaffe.errors import CamcaffeError, InputFileError

PACKAGE = "onnxruntime-web"
VERSION = "1.30.0"
# `npm view onnxruntime-web@1.30.0 dist.integrity`: the tarball is refused unless it hashes to this.
INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
LICENSE = "MIT, Copyright (c) Microsoft Corporation"
MAX_IR_VERSION = 13  # the newest ONNX IR version this onnxruntime-web reads ("Unsupported model IR version")
WASM_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
WEBGPU_FILES = (
    "ort.webgpu.min.js",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
ENV_DIR = "CAMCAFFE_ORT_WEB"


def default_dir() -> Path:
    """$CAMCAFFE_ORT_WEB, else ~/.cache/camcaffe/onnxruntime-web-VERSION (XDG_CACHE_HOME respected)."""
    given = os.environ.get(ENV_DIR, "").strip()
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "camcaffe" / f"{PACKAGE}-{VERSION}"


def files_needed(webgpu: bool = True) -> tuple[str, ...]:
    return WASM_FILES + (WEBGPU_FILES if webgpu else ())


def missing_files(folder: Path, webgpu: bool = True) -> list[str]:
    return [name for name in files_needed(webgpu) if not (folder / name).is_file()]


def version_in(folder: Path) -> str | None:
    """The version a vendor folder records (VERSION.json written by `fetch`), None when it records none."""
    try:
        return json.loads((folder / "VERSION.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def check_vendor_dir(folder: Path, webgpu: bool = True) -> None:
    """Refuse, in one line, a folder without the runtime files or holding another version."""
    hint = "run 'make web' or 'camcaffe web ... --fetch' (needs npm and the network), or give --ort-web DIR"
    if not folder.is_dir():
        raise InputFileError(f"{folder}: no {PACKAGE} {VERSION} files there; {hint}")
    missing = missing_files(folder, webgpu)
    if missing:
        raise InputFileError(f"{folder}: {PACKAGE} files missing ({', '.join(missing)}); {hint}")
    found = version_in(folder)
    if found is not None and found != VERSION:
        raise InputFileError(
            f"{folder}: holds {PACKAGE} {found}, but this camcaffe pins {VERSION}; {hint} into another folder"
        )


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def extract(tarball: bytes, folder: Path) -> None:
    """Check the tarball against the pinned integrity and write the runtime files into `folder` (atomically:
    a complete folder or none)."""
    if _integrity(tarball) != INTEGRITY:
        raise CamcaffeError(
            f"the {PACKAGE} {VERSION} tarball does not match its pinned sha512 integrity; refusing to use it"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            for name in files_needed(webgpu=True):
                member = archive.getmember(f"package/dist/{name}")
                source = archive.extractfile(member)
                if source is None:
                    raise CamcaffeError(f"{PACKAGE} tarball: package/dist/{name} is not a file")
                (staging / name).write_bytes(source.read())
        (staging / "VERSION.json").write_text(
            json.dumps({"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY}), encoding="utf-8"
        )
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(folder: Path, log=print) -> None:
    """`npm pack onnxruntime-web@VERSION` (the npm registry), checked and unpacked into `folder`."""
    npm = shutil.which("npm")
    if npm is None:
        raise CamcaffeError(
            f"--fetch needs npm to download {PACKAGE} {VERSION} (Debian: apt-get install npm); or unpack the "
            f"package yourself and give its dist/ folder with --ort-web DIR"
        )
    log(f"fetching {PACKAGE}@{VERSION} from the npm registry into {folder} (about 30 MB, once)")
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--silent", "--pack-destination", scratch],
            capture_output=True,
            text=True,
            check=False,
        )
        tarballs = list(Path(scratch).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise CamcaffeError(
                f"npm pack {PACKAGE}@{VERSION} failed ({last}); check the network or npm's registry"
            )
        extract(tarballs[0].read_bytes(), folder)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
