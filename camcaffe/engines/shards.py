"""Result shards: one Parquet file per batch, written atomically, read back for resuming and for results.csv.

A shard is named after the images it holds (a hash of their paths), so a batch that is redone (a worker
died, the job was rerun) overwrites its shard instead of adding a second copy. Shards are written to a
hidden temporary name and renamed, so a reader never sees a partial one. Columns are the results table's
(`pipeline.RESULT_COLUMNS`); empty cells of numeric columns (rows of images that failed) are nulls."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"

# Types of the known columns, used only when a shard's values say nothing (every image in it failed).
_KNOWN_TYPES = {
    "rank": "int64",
    "class_index": "int64",
    "probability": "float64",
    "x0": "int64",
    "y0": "int64",
    "x1": "int64",
    "y1": "int64",
}


def shard_name(paths: Sequence[str | os.PathLike]) -> str:
    """The file name of the shard of a batch: the same images give the same name."""
    digest = hashlib.sha256("\n".join(str(p) for p in paths).encode("utf-8", "surrogateescape"))
    return f"{SHARD_PREFIX}{digest.hexdigest()[:24]}{SHARD_SUFFIX}"


def shard_files(folder: Path) -> list[Path]:
    """Complete shards in a folder (temporary files of a write in progress are hidden and not listed)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(SHARD_PREFIX) and p.name.endswith(SHARD_SUFFIX)
    )


def _column(name: str, values: list):
    import pyarrow as pa

    if any(v is not None and not isinstance(v, str) for v in values):
        values = [None if isinstance(v, str) and v == "" else v for v in values]
    array = pa.array(values)
    if pa.types.is_null(array.type):
        array = pa.array(values, type=pa.type_for_alias(_KNOWN_TYPES.get(name, "string")))
    return array


def write_shard(path: Path, rows: list[dict]) -> Path:
    """Write rows (results-table dicts) as one Parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from camcaffe.atomic import write_atomic
    from camcaffe.engines.pipeline import RESULT_COLUMNS

    columns = list(RESULT_COLUMNS) + [k for row in rows for k in row if k not in RESULT_COLUMNS]
    columns = list(dict.fromkeys(columns))
    table = pa.table({c: _column(c, [row.get(c, "") for row in rows]) for c in columns})
    return write_atomic(path, lambda handle: pq.write_table(table, handle), mode="wb")


def read_shard(path: Path) -> list[dict]:
    """Rows of a shard, with the results table's values ("" for empty cells)."""
    import pyarrow.parquet as pq

    from camcaffe.errors import InputFileError

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as exc:
        raise InputFileError(
            f"{path}: unreadable result shard ({str(exc).splitlines()[0]}); delete it and rerun to redo its images"
        ) from None
    return [{k: ("" if v is None else v) for k, v in row.items()} for row in rows]


def merge_rows(chosen: dict[str, list[dict]], rows: Iterable[dict]) -> None:
    """Add a shard's rows to `chosen` (image -> its rows): an image keeps one shard's rows, and a result
    replaces an earlier failure (an image that failed in one run and was redone in a later one)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row["image"]), []).append(row)
    for image, group in groups.items():
        have = chosen.get(image)
        if have is None or (have[0].get("error") and not group[0].get("error")):
            chosen[image] = group


def read_results(folder: Path, files: Iterable[Path] | None = None) -> dict[str, list[dict]]:
    """image -> rows, from the given shards (default: every complete shard in the folder)."""
    chosen: dict[str, list[dict]] = {}
    for path in shard_files(folder) if files is None else files:
        merge_rows(chosen, read_shard(path))
    return chosen


def done_images(chosen: dict[str, list[dict]]) -> set[str]:
    """Images with a result (an image that failed is not done: a rerun tries it again)."""
    return {image for image, rows in chosen.items() if not rows[0].get("error")}


def ordered_rows(chosen: dict[str, list[dict]], paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The rows of the given images, in their order (images without rows are left out)."""
    out: list[dict] = []
    for path in paths:
        out.extend(chosen.get(str(path), []))
    return out
