"""One self-contained HTML report of a `camcaffe cam` run: a gallery (original with its boxes, CAM overlay,
top-k classes as bars), the run's figures and an optional evaluation table, sortable and filterable in the
browser a page at a time.

The page needs nothing from the network: its CSS and script are inline (the script pinned by a hash in the
Content-Security-Policy), the results are one JSON blob read with `JSON.parse` and shown with `textContent`
only, and images are linked by paths relative to the HTML file (default) or embedded as JPEG thumbnails."""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from camcaffe.errors import CamcaffeError, InputFileError

RESULTS_NAME = "results.csv"
REPORT_NAME = "report.html"
EVALUATION_NAMES = ("evaluation.json", "eval.json")
RUN_SETTINGS_NAME = "cam_settings.json"  # written by `camcaffe cam` beside results.csv (engines.results)
# Evaluation figures that are fractions, shown in percent as `camcaffe evaluate` prints them.
_FRACTION_GROUPS = ("classification_error", "localisation_error")
_FRACTION_NAMES = ("pointing_game",)
DEFAULT_MAX_EMBED_MB = 64.0
THUMB_SIDE = 360
THUMB_QUALITY = 80
# What browsers display; other originals (TIFF, PNM, ...) are embedded as thumbnails even when linking.
BROWSER_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".avif", ".ico"}
_BOX_FIELDS = ("x0", "y0", "x1", "y1")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PLACEHOLDER = re.compile(r"__CAMCAFFE_(TITLE|CSP|VERSION|DATA)__")


class ReportError(CamcaffeError):
    """The results table or evaluation file cannot be read, or the report cannot be written."""


@dataclass
class ReportStats:
    images: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    embedded_bytes: int = 0
    evaluation: Path | None = None


# ----------------------------------------------------------------------------------------------------------
# Reading results.csv


def results_csv(path: str | os.PathLike) -> Path:
    """The results table named by a `cam --out` folder or the CSV file itself."""
    target = Path(path)
    if target.is_dir():
        target = target / RESULTS_NAME
        if not target.is_file():
            raise InputFileError(
                f"{path}: no {RESULTS_NAME} in this folder; run 'camcaffe cam MODEL IMAGES --out {path}' first"
            )
        return target
    if not target.exists():
        raise InputFileError(
            f"{path}: no such file or folder; pass a 'camcaffe cam --out' folder or its {RESULTS_NAME}"
        )
    return target


def read_results(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of results.csv as dicts of strings, and the column names (unknown columns are kept)."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "image" not in columns:
                raise ReportError(
                    f"{csv_path}: not a camcaffe results table (no 'image' column in its header); "
                    "pass the results.csv written by 'camcaffe cam'"
                )
            reader.fieldnames = columns
            rows = [{k: (v or "") for k, v in row.items() if isinstance(k, str)} for row in reader]
    except OSError as exc:
        raise InputFileError(
            f"{csv_path}: cannot be read ({exc.strerror or exc}); check its permissions"
        ) from None
    except UnicodeDecodeError:
        raise ReportError(
            f"{csv_path}: is not UTF-8 text; pass the results.csv written by 'camcaffe cam'"
        ) from None
    except csv.Error as exc:
        raise ReportError(f"{csv_path}: malformed CSV ({exc}); regenerate it with 'camcaffe cam'") from None
    return rows, columns


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _integer(text: str) -> int | None:
    value = _number(text)
    return None if value is None else int(round(value))


def parse_boxes(text: str) -> list[list[int]]:
    """Boxes from free text: JSON `[[x0,y0,x1,y1], ...]`, `x0 y0 x1 y1; ...` or anything else listing the
    numbers four by four. Text whose number count is not a multiple of four gives no box."""
    numbers = _NUMBER.findall(text or "")
    if not numbers or len(numbers) % 4:
        return []
    values = [int(round(float(n))) for n in numbers]
    return [box for box in (values[i : i + 4] for i in range(0, len(values), 4)) if _valid_box(box)]


def _valid_box(box: list[int]) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] >= box[0] and box[3] >= box[1]


def _row_boxes(row: dict[str, str], box_columns: list[str]) -> list[list[int]]:
    boxes: list[list[int]] = []
    primary = [_integer(row.get(name, "")) for name in _BOX_FIELDS]
    if all(v is not None for v in primary) and _valid_box(primary):  # type: ignore[arg-type]
        boxes.append(primary)  # type: ignore[arg-type]
    for column in box_columns:
        for box in parse_boxes(row.get(column, "")):
            if box not in boxes:
                boxes.append(box)
    return boxes


# ----------------------------------------------------------------------------------------------------------
# Locating and linking images


def _run_folder(overlay: str, csv_dir: Path) -> Path | None:
    """The folder `camcaffe cam` ran in, inferred from an overlay path relative to it (`out/x_cam.png` for a
    CSV in `.../out/`): image paths in the CSV are relative to that folder."""
    parent = Path(overlay).parent
    if not overlay or parent.is_absolute() or ".." in parent.parts:
        return None
    parts = parent.parts
    resolved = csv_dir.resolve()
    if not parts:
        return resolved
    if len(resolved.parts) > len(parts) and resolved.parts[-len(parts) :] == parts:
        return Path(*resolved.parts[: -len(parts)])
    return None


class _Locator:
    def __init__(self, csv_dir: Path, run_dir: Path | None):
        self.bases = [Path.cwd()] + ([run_dir] if run_dir else []) + [csv_dir]

    def find(self, value: str, by_name_in: Path | None = None) -> Path | None:
        if not value:
            return None
        path = Path(value)
        candidates = [path] if path.is_absolute() else [base / path for base in self.bases]
        if by_name_in is not None:
            candidates.append(by_name_in / path.name)
        for candidate in candidates:
            try:
                if candidate.is_file():
                    return candidate
            except OSError:
                continue
        return None


def relative_url(target: Path, html_dir: Path) -> str:
    """A URL for target relative to the report's folder, every path segment percent-encoded (so that no
    file name can read as a scheme, query or fragment)."""
    try:
        rel = os.path.relpath(target.resolve(), html_dir.resolve())
    except ValueError:  # another drive on Windows
        return target.resolve().as_uri()
    return quote(rel.replace(os.sep, "/"), safe="/")


def _header_size(path: Path) -> tuple[int, int] | None:
    from camcaffe.runtime.preprocess import image_size_from_header

    try:
        with open(path, "rb") as handle:
            return image_size_from_header(handle.read(65536))
    except OSError:
        return None


class _Thumbnails:
    """JPEG thumbnails as data URIs, with a cap on their total size."""

    def __init__(self, cap_bytes: int, side: int = THUMB_SIDE):
        self.cap_bytes = cap_bytes
        self.side = side
        self.total = 0

    def make(self, path: Path) -> tuple[str, int, int] | None:
        """(data URI, original width, original height), or None when the file cannot be decoded."""
        import cv2

        from camcaffe.runtime.preprocess import load_image_bgr_uint8

        try:
            image = load_image_bgr_uint8(path)
        except CamcaffeError:
            return None
        height, width = image.shape[:2]
        scale = min(1.0, self.side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
        if not ok:
            return None
        uri = "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
        self.total += len(uri)
        if self.total > self.cap_bytes:
            raise ReportError(
                f"{path}: embedding the thumbnails passes the {self.cap_bytes / 2**20:.0f} MB cap; "
                "link the images instead (the default, drop --embed) or raise --max-embed-mb"
            )
        return uri, width, height


# ----------------------------------------------------------------------------------------------------------
# Evaluation figures


def _format_figure(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def evaluation_rows(data: Any, source: str) -> list[list[Any]]:
    """[name, shown value, raw value] for every number in a JSON object of metric -> number, nested objects
    flattened as `group › name` (three levels at most); short strings are listed, anything else skipped."""
    if not isinstance(data, dict):
        raise ReportError(
            f"{source}: expected a JSON object of metric name -> number, got {type(data).__name__}; "
            "pass the file written by 'camcaffe evaluate'"
        )
    rows: list[list[Any]] = []

    def shown(path: list[str], value: float) -> str:
        if (path and path[0] in _FRACTION_GROUPS) or path[-1] in _FRACTION_NAMES:
            return f"{100 * value:.2f} %"
        if path[-1].endswith("_percent"):
            return f"{value:.2f} %"
        return _format_figure(value)

    def walk(obj: dict, prefix: str, depth: int, path: list[str]) -> None:
        for key, value in obj.items():
            name = f"{prefix} › {key}" if prefix else str(key)
            if key == "per_image" and not prefix:
                continue  # one entry per image: the gallery shows those
            if isinstance(value, bool):
                rows.append([name, "yes" if value else "no", str(value).lower()])
            elif isinstance(value, (int, float)):
                if isinstance(value, int) or math.isfinite(value):
                    rows.append([name, shown([*path, str(key)], value), value])
            elif isinstance(value, dict) and depth < 3:
                walk(value, name, depth + 1, [*path, str(key)])
            elif isinstance(value, str) and len(value) <= 200:
                rows.append([name, value, value])

    walk(data, "", 1, [])
    return rows


def run_settings_rows(csv_dir: Path) -> list[list[Any]]:
    """How the run was made (cam_settings.json beside results.csv): model, method, layers, views, boxes and
    preprocessing, as [name, shown value, raw value] rows; [] when the file is absent or unreadable."""
    try:
        settings = json.loads((csv_dir / RUN_SETTINGS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(settings, dict):
        return []

    def text(value: Any) -> str:
        if value is None or value == [] or value == "":
            return "—"
        if isinstance(value, list):
            return ",".join(_format_figure(v) if isinstance(v, (int, float)) else str(v) for v in value)
        return str(value)

    pre = settings.get("preprocess") if isinstance(settings.get("preprocess"), dict) else {}
    boxes = text(settings.get("boxes"))
    if settings.get("boxes") == "threshold" and settings.get("box_threshold") is not None:
        boxes += f" ({settings['box_threshold']} of the maximum)"
    resize = settings.get("resize")
    views = "10 crops of a 256 resize" if settings.get("crops") == 10 or resize == "tencrop" else text(resize)
    rows = [
        ["model", text(settings.get("model")), 0],
        ["method", text(settings.get("method")), 0],
        [
            "feature layer",
            text(settings.get("feature_layer")) if settings.get("feature_layer") else "detected",
            0,
        ],
        ["classifier layer", text(settings.get("fc_layer")) if settings.get("fc_layer") else "detected", 0],
        ["views", views, 0],
        ["box generator", boxes, 0],
        ["mean", text(pre.get("mean_file") or pre.get("mean")), 0],
        ["raw scale", text(pre.get("raw_scale")), 0],
        ["channel swap", text(pre.get("channel_swap")), 0],
        ["input scale", text(pre.get("input_scale")), 0],
    ]
    if settings.get("input_size"):
        rows.append(["input size", text(settings.get("input_size")), 0])
    return rows


def load_evaluation(path: Path) -> list[list[Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(
            f"{path}: no such evaluation file; run 'camcaffe evaluate' or drop --evaluation"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "regenerate it with 'camcaffe evaluate'"
        ) from None
    return evaluation_rows(data, str(path))


# ----------------------------------------------------------------------------------------------------------
# Building the page


def _template() -> str:
    return resources.files("camcaffe.output").joinpath("report_template.html").read_text(encoding="utf-8")


def script_json(data: Any) -> str:
    """JSON that is safe inside <script type="application/json">: no `<`, `>`, `&` (so no `</script>` or
    `<!--`), and no U+2028/U+2029."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _csp(template: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", template, flags=re.DOTALL)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode("ascii") + "'"
        for s in scripts
    )
    return (
        "default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; "
        f"script-src {hashes}; base-uri 'none'; form-action 'none'"
    )


def render_html(data: dict[str, Any], title: str) -> str:
    from camcaffe import __version__

    template = _template()
    values = {
        "TITLE": html.escape(title),
        "CSP": html.escape(_csp(template)),
        "VERSION": html.escape(__version__),
        "DATA": script_json(data),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)  # one pass: data is never rescanned


def build_report(
    results: Path,
    out_html: Path,
    evaluation: Path | None = None,
    embed: bool = False,
    title: str | None = None,
    max_embed_mb: float = DEFAULT_MAX_EMBED_MB,
    warn: Callable[[str], None] | None = None,
) -> tuple[str, ReportStats]:
    """The report's HTML text and what went into it."""
    warn = warn or (lambda message: None)
    csv_path = results_csv(results)
    csv_dir = csv_path.parent
    html_dir = out_html.parent if str(out_html.parent) else Path(".")
    rows, columns = read_results(csv_path)
    box_columns = [c for c in columns if c not in (*_BOX_FIELDS, "box_threshold") and "box" in c.lower()]
    stats = ReportStats()
    if evaluation is None:
        evaluation = next((csv_dir / n for n in EVALUATION_NAMES if (csv_dir / n).is_file()), None)
        explicit = False
    else:
        explicit = True
    figures: list[list[Any]] = []
    if evaluation is not None:
        try:
            figures = load_evaluation(evaluation)
            stats.evaluation = evaluation
        except CamcaffeError as exc:
            if explicit:
                raise
            warn(f"skipping the evaluation figures: {exc}")

    run_dir = next((d for d in (_run_folder(r.get("overlay", ""), csv_dir) for r in rows) if d), None)
    locator = _Locator(csv_dir, run_dir)
    thumbs = _Thumbnails(int(max_embed_mb * 2**20)) if max_embed_mb > 0 else _Thumbnails(0)
    links: dict[tuple[str, bool], tuple[str, int, int]] = {}

    def link(value: str, overlay: bool) -> tuple[str, int, int]:
        """(URL or data URI or "", width, height) of an image named in the CSV."""
        key = (value, overlay)
        if key in links:
            return links[key]
        found = locator.find(value, by_name_in=csv_dir if overlay else None)
        result: tuple[str, int, int] = ("", 0, 0)
        if found is None:
            if value:
                stats.missing.append(value)
        elif embed or found.suffix.lower() not in BROWSER_SUFFIXES:
            made = thumbs.make(found)
            if made is None:
                warn(f"{found}: cannot be decoded for a thumbnail; shown as missing")
            else:
                result = made
        else:
            height, width = (_header_size(found) if not overlay else None) or (0, 0)
            result = (relative_url(found, html_dir), width, height)
        links[key] = result
        return result

    grouped: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        grouped.setdefault(row.get("image", ""), []).append(row)
    items: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    top1: list[float] = []
    for image, image_rows in grouped.items():
        failed = [r for r in image_rows if r.get("error", "").strip()]
        classes = [r for r in image_rows if not r.get("error", "").strip() and r.get("class_index", "") != ""]
        if failed and not classes:
            errors.append({"n": image, "e": failed[0]["error"].strip()})
            continue
        classes.sort(key=lambda r: _integer(r.get("rank", "")) or 10**9)
        src, width, height = link(image, overlay=False)
        entry_classes = []
        for r in classes:
            overlay_value = r.get("overlay", "")
            entry_classes.append(
                {
                    "r": _integer(r.get("rank", "")) or 0,
                    "k": _integer(r.get("class_index", "")),
                    "l": r.get("label", "") or f"class {r.get('class_index', '')}",
                    "p": _number(r.get("probability", "")),
                    "b": _row_boxes(r, box_columns),
                    "o": link(overlay_value, overlay=True)[0] if overlay_value else "",
                    "on": overlay_value,
                }
            )
        if entry_classes and entry_classes[0]["p"] is not None:
            top1.append(entry_classes[0]["p"])
        items.append({"n": image, "src": src, "w": width, "h": height, "c": entry_classes})
    stats.images = len(items)
    stats.failed = len(errors)
    stats.embedded_bytes = thumbs.total

    run = [
        ["images", f"{len(items) + len(errors):,}", len(items) + len(errors)],
        ["processed", f"{len(items):,}", len(items)],
        ["failed", f"{len(errors):,}", len(errors)],
        ["classes per image", _format_figure(max((len(i["c"]) for i in items), default=0)), 0],
        ["distinct top-1 classes", f"{len({i['c'][0]['l'] for i in items if i['c']}):,}", 0],
    ]
    if top1:
        ordered = sorted(top1)
        run.append(["mean top-1 probability", f"{sum(top1) / len(top1):.3f}", 0.0])
        run.append(["median top-1 probability", f"{ordered[len(ordered) // 2]:.3f}", 0.0])
    if stats.missing:
        run.append(["image files not found", f"{len(stats.missing):,}", len(stats.missing)])
    run.extend(run_settings_rows(csv_dir))
    stamp = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")
    shown_title = title or f"camcaffe report — {csv_dir.resolve().name or csv_path.name}"
    meta = f"{csv_path} · {'thumbnails embedded' if embed else 'images linked'} · generated {stamp}"
    if stats.evaluation is not None:
        meta += f" · evaluation {stats.evaluation}"
    data = {
        "title": shown_title,
        "meta": meta,
        "run": run,
        "evaluation": figures,
        "items": items,
        "errors": errors,
    }
    return render_html(data, shown_title), stats


def write_report(
    results: Path,
    out_html: Path,
    evaluation: Path | None = None,
    embed: bool = False,
    title: str | None = None,
    *,
    max_embed_mb: float = DEFAULT_MAX_EMBED_MB,
    quiet: bool = False,
) -> Path:
    """Write the HTML report of a `camcaffe cam` output folder (or its results.csv) atomically; returns
    its path. Warnings (missing image files, unreadable evaluation found next to the CSV) go to stderr."""
    from camcaffe.atomic import write_atomic

    out_html = Path(out_html)
    if out_html.is_dir():
        raise InputFileError(
            f"{out_html}: is a folder; give the report a file name such as {out_html / REPORT_NAME}"
        )
    folder = out_html.parent if str(out_html.parent) else Path(".")
    if not folder.is_dir():
        raise InputFileError(f"{folder}: the report's folder does not exist; create it first")

    def warn(message: str) -> None:
        if not quiet:
            print(f"camcaffe: warning: {message}", file=sys.stderr)

    text, stats = build_report(
        Path(results), out_html, evaluation, embed, title, max_embed_mb=max_embed_mb, warn=warn
    )
    if stats.missing:
        warn(
            f"{len(stats.missing)} image file(s) not found (first: {stats.missing[0]}); they show as missing. "
            "Run the report from the folder 'camcaffe cam' ran in, or keep the images where the CSV says"
        )
    try:
        write_atomic(out_html, lambda handle: handle.write(text))
    except OSError as exc:
        raise InputFileError(
            f"{out_html}: cannot be written ({exc.strerror or exc}); choose another -o"
        ) from None
    if not quiet:
        extra = f", {stats.embedded_bytes / 2**20:.1f} MB of thumbnails" if embed else ""
        print(
            f"camcaffe: wrote {out_html}: {stats.images} image(s), {stats.failed} failed{extra}",
            file=sys.stderr,
        )
    return out_html
