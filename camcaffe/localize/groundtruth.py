"""Ground-truth boxes for `camcaffe evaluate`: a folder of PASCAL-VOC-style XML files (the ILSVRC format,
one file per image, named after it) or a CSV with columns image, class, x0, y0, x1, y1.

Boxes are inclusive pixel coordinates (x0, y0, x1, y1), as ILSVRC's xmin..xmax and the results table's. Images
are keyed by file stem, so `photos/cat.jpg` in results.csv meets `cat.xml` or a CSV row `cat.jpg`/`cat`.
XML is read with the standard library's expat parser, which neither fetches external entities nor expands
nested entity bombs (expat >= 2.4.1); files over 16 MiB are refused."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from camcaffe.errors import CamcaffeError, InputFileError

Box = tuple[int, int, int, int]
MAX_ANNOTATION_BYTES = 16 * 1024 * 1024
CSV_COLUMNS = ("image", "class", "x0", "y0", "x1", "y1")
_ALIASES = {"label": "class", "name": "class", "xmin": "x0", "ymin": "y0", "xmax": "x1", "ymax": "y1"}


class GroundTruthError(CamcaffeError):
    """A ground-truth file or folder is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class GtObject:
    cls: str  # as written: a label, a synset id (nXXXXXXXX) or a class index
    box: Box


def _number(text: str | None, where: str, field: str) -> int:
    try:
        return int(round(float(str(text).strip())))
    except (TypeError, ValueError):
        raise GroundTruthError(f"{where}: {field} '{text}' is not a number") from None


def _checked_box(values: list[int], where: str) -> Box:
    x0, y0, x1, y1 = values
    if x1 < x0 or y1 < y0:
        raise GroundTruthError(
            f"{where}: box ({x0}, {y0}, {x1}, {y1}) has x1 < x0 or y1 < y0; give x0, y0, x1, y1 (inclusive)"
        )
    return x0, y0, x1, y1


def read_xml(path: Path) -> list[GtObject]:
    import xml.etree.ElementTree as ElementTree

    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise GroundTruthError(f"{path}: larger than {MAX_ANNOTATION_BYTES} bytes; not an annotation file")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise GroundTruthError(
            f"{path}: not valid XML ({exc}); expected a PASCAL VOC / ILSVRC annotation"
        ) from None
    objects = []
    for number, element in enumerate(root.iter("object"), 1):
        where = f"{path} object {number}"
        name = (element.findtext("name") or "").strip()
        box = element.find("bndbox")
        if not name or box is None:
            raise GroundTruthError(f"{where}: needs <name> and <bndbox> (xmin, ymin, xmax, ymax)")
        values = [_number(box.findtext(tag), where, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        objects.append(GtObject(name, _checked_box(values, where)))
    return objects


def read_csv(path: Path) -> dict[str, list[GtObject]]:
    if path.stat().st_size > 64 * MAX_ANNOTATION_BYTES:
        raise GroundTruthError(f"{path}: too large for a ground-truth table")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.reader(lines)
    header = [_ALIASES.get(h.strip().lower(), h.strip().lower()) for h in next(reader, [])]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise GroundTruthError(
            f"{path}: header lacks {', '.join(missing)}; the first row must name image, class, x0, y0, x1, y1"
        )
    column = {name: header.index(name) for name in CSV_COLUMNS}
    table: dict[str, list[GtObject]] = {}
    for number, row in enumerate(reader, 2):
        where = f"{path} row {number}"
        if len(row) < len(header):
            raise GroundTruthError(f"{where}: {len(row)} fields, expected {len(header)}")
        image, cls = row[column["image"]].strip(), row[column["class"]].strip()
        if not image or not cls:
            raise GroundTruthError(f"{where}: empty image or class")
        values = [_number(row[column[c]], where, c) for c in ("x0", "y0", "x1", "y1")]
        table.setdefault(image_key(image), []).append(GtObject(cls, _checked_box(values, where)))
    return table


def image_key(image: str | os.PathLike) -> str:
    """How results and ground truth meet: the file name without folder and extension."""
    return Path(str(image).replace("\\", "/")).stem


def load_groundtruth(path: str | os.PathLike) -> dict[str, list[GtObject]]:
    """{image stem: objects} from a folder of XML files (searched recursively), one XML file or a CSV."""
    source = Path(path)
    if not source.exists():
        raise InputFileError(f"{source}: ground truth not found; give a folder of XML files or a CSV")
    if source.is_dir():
        files = sorted(source.rglob("*.xml"))
        if not files:
            raise GroundTruthError(f"{source}: no .xml annotation files in this folder")
        table: dict[str, list[GtObject]] = {}
        for file in files:
            table.setdefault(file.stem, []).extend(read_xml(file))
        return table
    if source.suffix.lower() == ".xml":
        return {source.stem: read_xml(source)}
    if source.suffix.lower() in (".csv", ".txt"):
        return read_csv(source)
    raise GroundTruthError(f"{source}: unknown ground-truth format; give a folder of .xml files or a .csv")
