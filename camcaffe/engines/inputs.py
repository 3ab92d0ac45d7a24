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


MANIFEST_EXTENSIONS = {".csv", ".parquet"}
MANIFEST_COLUMN = "path"


def is_manifest_name(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_EXTENSIONS


def read_manifest(path: Path) -> list[Path]:
    """Image paths from a CSV or Parquet manifest's `path` column, in its order; relative paths are
    resolved against the manifest's folder, empty cells skipped."""
    import pandas as pd

    from camcaffe.errors import InputFileError

    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except ImportError:
        raise InputFileError(
            f"{path}: reading a Parquet manifest needs pyarrow; pip install pyarrow (or 'camcaffe[ray]'), "
            "or give a CSV manifest"
        ) from None
    except (OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(
            f"{path}: cannot read the manifest ({detail}); give a CSV or Parquet file"
        ) from None
    if MANIFEST_COLUMN not in frame.columns:
        found = ", ".join(map(str, frame.columns[:8])) or "none"
        raise InputFileError(
            f"{path}: manifest has no '{MANIFEST_COLUMN}' column (columns: {found}); "
            f"name the column of image paths '{MANIFEST_COLUMN}'"
        )
    base = path.parent
    out = []
    for value in frame[MANIFEST_COLUMN].tolist():
        if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
            continue
        entry = Path(str(value).strip())
        out.append(entry if entry.is_absolute() else base / entry)
    return out


def expand_inputs(items: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Return (image paths in a stable order, problems). A file given by name is kept even if it
    is not an image (it is then reported as a failed image); folders are searched recursively; a .csv or
    .parquet file is a manifest whose `path` column lists the images (see read_manifest)."""
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
        elif path.is_file() and is_manifest_name(path):
            found = read_manifest(path)
            if not found:
                problems.append(f"{path}: manifest lists no images")
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
