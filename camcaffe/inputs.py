"""Expand the `cam` command's INPUT arguments (files, folders, globs) into image paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".jpe",
    ".jp2",
    ".gif",
}


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_inputs(items: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Return (image paths in a stable order, problems). A file given by name is kept even if it
    is not an image (it is then reported as a failed image); folders are searched recursively."""
    paths: list[Path] = []
    problems: list[str] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
            if not found:
                problems.append(
                    f"{path}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS)[:5])}, ...)"
                )
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{text}: no file matches this pattern")
            paths.extend(found)
        else:
            paths.append(path)  # reported as a failed image: "not found"
    unique = list(dict.fromkeys(paths))
    return unique, problems


def output_stems(paths: list[Path]) -> list[str]:
    """A distinct file stem per image, for overlays: photo.jpg -> photo, a second photo.png -> photo_2."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = path.stem or "image"
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        stems.append(stem if count == 1 else f"{stem}_{count}")
    return stems
