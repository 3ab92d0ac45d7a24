"""Download the caffemodels (and deploy files) listed in a manifest, checking sha256.

`python -m camcaffe.fetch weights/manifest.json` fetches every entry whose file is missing; a
download whose digest differs from the manifest is deleted and reported. URLs may be http(s) or
file:// (tests and mirrors)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from camcaffe.errors import CamcaffeError, InputFileError


@dataclass
class ManifestEntry:
    name: str
    url: str
    sha256: str | None
    target: Path


def read_manifest(path: Path) -> list[ManifestEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"{path}: manifest not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CamcaffeError(f"{path}: not valid JSON ({exc}); fix the manifest") from None
    entries = []
    root = path.parent.parent
    for index, item in enumerate(data.get("files", [])):
        try:
            entries.append(
                ManifestEntry(item["name"], item["url"], item.get("sha256"), root / item["target"])
            )
        except (KeyError, TypeError):
            raise CamcaffeError(f"{path}: entry {index} needs name, url and target") from None
    return entries


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(entry: ManifestEntry, allow_unverified: bool = False, timeout: float = 60.0) -> str:
    """Download one entry atomically; return 'present', 'downloaded' or raise CamcaffeError."""
    if entry.target.exists():
        if entry.sha256 and sha256_of(entry.target) != entry.sha256:
            raise CamcaffeError(
                f"{entry.target}: exists but its sha256 differs from the manifest; delete it and "
                "run 'make weights' again"
            )
        return "present"
    if entry.sha256 is None and not allow_unverified:
        raise CamcaffeError(
            f"{entry.name}: the manifest has no sha256 for {entry.url}; download it yourself to "
            f"{entry.target}, or set CAMCAFFE_ALLOW_UNVERIFIED=1 to accept it unchecked"
        )
    entry.target.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.target.with_name(f".{entry.target.name}.part{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise CamcaffeError(
                f"{entry.name}: downloaded file has sha256 {digest.hexdigest()}, the manifest says "
                f"{entry.sha256}; not installed (corrupt download or changed upstream file)"
            )
        os.replace(tmp, entry.target)
        if entry.sha256 is None:
            print(
                f"{entry.name}: unverified download, sha256 {digest.hexdigest()} (pin it in the manifest)",
                file=sys.stderr,
            )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CamcaffeError(
            f"{entry.name}: cannot download {entry.url} ({reason}); check the network or fetch "
            f"it by hand into {entry.target}"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return "downloaded"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camcaffe.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("names", nargs="*", help="only these entries")
    args = parser.parse_args(argv)
    allow = os.environ.get("CAMCAFFE_ALLOW_UNVERIFIED") == "1"
    failed = 0
    try:
        entries = read_manifest(args.manifest)
    except CamcaffeError as exc:
        print(f"camcaffe: error: {exc}", file=sys.stderr)
        return 2
    for entry in entries:
        if args.names and entry.name not in args.names:
            continue
        try:
            status = fetch(entry, allow)
            print(f"{entry.name}: {status} {entry.target}", file=sys.stderr)
        except CamcaffeError as exc:
            failed += 1
            print(f"camcaffe: error: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
