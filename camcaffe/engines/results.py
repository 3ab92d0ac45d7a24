"""The files a `cam` run leaves in its output folder: results.csv (and .json) and cam_settings.json."""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from camcaffe.errors import CamcaffeError, InputFileError

if TYPE_CHECKING:
    from camcaffe.engines.job import CamJob


def prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputFileError(f"{out}: exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise InputFileError(f"{out}: output folder is not writable; choose another --out")


_INTEGER_COLUMNS = frozenset({"rank", "class_index", "x0", "y0", "x1", "y1"})


def _cell(column: str, value: object) -> str:
    """One CSV cell: empty for missing values (None, NaN), whole numbers as integers, floats in full."""
    if value is None:
        return ""
    if isinstance(value, float) or type(value).__module__ == "numpy":
        number = float(value)  # type: ignore[arg-type]
        if math.isnan(number):
            return ""
        if column in _INTEGER_COLUMNS and number.is_integer():
            return str(int(number))
        return str(int(value)) if "int" in type(value).__name__ else repr(number)
    return str(value)


def write_results(out: Path, rows: list[dict], as_json: bool) -> None:
    """results.csv (RESULT_COLUMNS, one row per image and class; written atomically) and optionally
    results.json. Written with the csv module: pandas would cost a third of a second to import."""
    from camcaffe.atomic import write_atomic, write_json_atomic
    from camcaffe.engines.pipeline import RESULT_COLUMNS

    def write(handle) -> None:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(RESULT_COLUMNS)
        for row in rows:
            writer.writerow([_cell(column, row.get(column)) for column in RESULT_COLUMNS])

    write_atomic(out / "results.csv", write)
    if as_json:
        write_json_atomic(out / "results.json", rows)


SETTINGS_FILE = "cam_settings.json"


def write_settings(job: CamJob, mean_file: Path | None) -> None:
    """What `camcaffe evaluate --model` needs to recompute this run's maps the same way (also shown in the
    report's run panel)."""
    from camcaffe.atomic import write_json_atomic

    pre = job.preprocess
    write_json_atomic(
        job.out / SETTINGS_FILE,
        {
            "model": str(job.model),
            "method": job.settings.method,
            "feature_layer": job.feature_layer,
            "fc_layer": job.fc_layer,
            "resize": job.settings.resize,
            "resize_filter": job.settings.resize_filter,
            "crops": 10 if job.settings.resize == "tencrop" else 1,
            "boxes": job.settings.boxes,
            "box_threshold": job.settings.box_threshold,
            "top_k": job.settings.top_k,
            "classes": list(job.settings.classes),
            "input_size": None if job.settings.input_size is None else list(job.settings.input_size),
            "layout": job.settings.layout,
            "score": job.settings.score,
            "preprocess": {
                "settled": True,  # the whole recipe cam used (None: not used), not flags to merge with metadata
                "model_mean_image": pre.mean_image is not None and mean_file is None,
                "mean": None if pre.mean is None else [float(v) for v in pre.mean],
                "mean_file": None if mean_file is None else str(mean_file),
                "raw_scale": pre.raw_scale,
                "channel_swap": None if pre.channel_swap is None else [int(v) for v in pre.channel_swap],
                "input_scale": pre.input_scale,
                "std": None if pre.std is None else [float(v) for v in pre.std],
            },
        },
    )


def read_cam_settings(results: Path) -> dict:
    """The cam run's settings (cam_settings.json beside results.csv), or {} for runs that have none."""
    import json

    folder = results if results.is_dir() else results.parent
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CamcaffeError(f"{path}: cannot be read ({exc}); delete it or rerun 'camcaffe cam'") from None
    return settings if isinstance(settings, dict) else {}


def remove_unlisted_outputs(
    out: Path, started: Iterable[str], recorded: set[str], rows: list[dict]
) -> list[Path]:
    """After an interrupted run: delete the per-image files (`<stem>_cam.png`, `<stem>_cam_<class>.png`,
    `<stem>_cam.npy`) of the images whose work had started (`started` stems) that results.csv will not list:
    overlays no row names, and maps of images not `recorded`. Then results.csv and the folder agree."""
    listed = {Path(str(row["overlay"])).name for row in rows if row.get("overlay")}
    wanted = set(started)
    pattern = re.compile(r"(?P<stem>.+)_cam(?:_\d+)?\.(?P<ext>png|npy)")
    removed = []
    for entry in os.scandir(out):
        match = pattern.fullmatch(entry.name)
        if not match or match["stem"] not in wanted or not entry.is_file(follow_symlinks=False):
            continue
        kept = entry.name in listed if match["ext"] == "png" else match["stem"] in recorded
        if not kept:
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed
