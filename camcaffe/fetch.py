"""Download the caffemodels (and deploy files) listed in a manifest, checking their digests.

`python -m camcaffe.fetch weights/manifest.json` fetches every entry whose file is missing; a
download whose digest differs from the manifest is deleted and reported. An entry is pinned by any of
`sha256`, `sha1` (what Caffe's model-zoo readmes publish) and `git_blob_sha1` (the object id GitHub lists
for a file in a repository); every digest given must match. An entry with none is refused unless
CAMCAFFE_ALLOW_UNVERIFIED=1. URLs may be http(s) or file:// (tests and mirrors)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from camcaffe.errors import CamcaffeError, InputFileError

# digest name -> length of its hex string
DIGESTS = {"sha256": 64, "sha1": 40, "git_blob_sha1": 40}


@dataclass
class ManifestEntry:
    name: str
    url: str
    sha256: str | None
    target: Path
    sha1: str | None = None
    git_blob_sha1: str | None = None

    def digests(self) -> dict[str, str]:
        """The digests the manifest pins for this file (empty: unverifiable)."""
        return {kind: getattr(self, kind) for kind in DIGESTS if getattr(self, kind)}


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
            entry = ManifestEntry(
                item["name"],
                item["url"],
                item.get("sha256"),
                root / item["target"],
                item.get("sha1"),
                item.get("git_blob_sha1"),
            )
        except (KeyError, TypeError):
            raise CamcaffeError(f"{path}: entry {index} needs name, url and target") from None
        _check_digest_syntax(entry, path)
        entries.append(entry)
    return entries


def _check_digest_syntax(entry: ManifestEntry, manifest: Path) -> None:
    for kind, length in DIGESTS.items():
        value = getattr(entry, kind)
        if value is not None and not re.fullmatch(f"[0-9a-f]{{{length}}}", str(value)):
            raise CamcaffeError(
                f"{manifest}: entry '{entry.name}' has {kind} {value!r}, not {length} lower-case hex digits; "
                "fix it or set it to null"
            )


def sha256_of(path: Path) -> str:
    return file_digests(path)["sha256"]


def file_digests(path: Path) -> dict[str, str]:
    """sha256, sha1 and the git blob id of a file, in one pass."""
    hashers = {kind: hashlib.sha256() if kind == "sha256" else hashlib.sha1() for kind in DIGESTS}
    # A git blob id hashes the header "blob <size>\0" followed by the content.
    hashers["git_blob_sha1"].update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {kind: hasher.hexdigest() for kind, hasher in hashers.items()}


def mismatches(entry: ManifestEntry, path: Path) -> list[str]:
    """'kind actual (manifest: expected)' for every pinned digest the file does not match."""
    pinned = entry.digests()
    if not pinned:
        return []
    actual = file_digests(path)
    return [
        f"{kind} {actual[kind]} (manifest: {want})" for kind, want in pinned.items() if actual[kind] != want
    ]


def fetch(entry: ManifestEntry, allow_unverified: bool = False, timeout: float = 60.0) -> str:
    """Download one entry atomically; return 'present', 'downloaded' or raise CamcaffeError."""
    if entry.target.exists():
        wrong = mismatches(entry, entry.target)
        if wrong:
            raise CamcaffeError(
                f"{entry.target}: exists but its {'; '.join(wrong)} differs from the manifest; delete it and "
                "run 'make weights' again"
            )
        return "present"
    if not entry.digests() and not allow_unverified:
        raise CamcaffeError(
            f"{entry.name}: REFUSED, the manifest pins no digest for {entry.url}, so a changed or tampered "
            f"file could not be told apart; download it yourself to {entry.target}, or set "
            "CAMCAFFE_ALLOW_UNVERIFIED=1 to accept it unchecked"
        )
    entry.target.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.target.with_name(f".{entry.target.name}.part{os.getpid()}")
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        wrong = mismatches(entry, tmp)
        if wrong:
            raise CamcaffeError(
                f"{entry.name}: downloaded file has {'; '.join(wrong)}; not installed (corrupt download or "
                "changed upstream file)"
            )
        sha256 = sha256_of(tmp) if not entry.digests() else None
        os.replace(tmp, entry.target)
        if sha256 is not None:
            print(
                f"{entry.name}: UNVERIFIED download, sha256 {sha256} (pin it in the manifest)",
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
