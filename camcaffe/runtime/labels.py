"""Class label files: the formats Caffe projects ship, read into a list where list[i] is class i's name.

Accepted (detected from the content, not the extension):

* JSON list of names (``["tench", "goldfish", ...]``);
* Caffe ``synset_words.txt``: ``n01440764 tench, Tinca tinca`` (the text after the synset id is kept);
* comma CSV ``index,label`` with or without a header row (quoted fields allowed);
* space-separated ``index label`` lines (``0 bicycling``; the label may contain spaces);
* one label per line (an optional first line ``label``/``labels``/``name``/``class`` is taken as a header).

Indexed formats must use each index 0..K-1 exactly once (any order). A synset_words.txt keeps its synset ids
(`Labels.synsets`), so classes can be named by id; `resolve_class` turns what a person typed (an index, a synset
id, a whole label line or any one of its comma-separated synonyms, in any case) into a class index.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from camcaffe.errors import CamcaffeError, InputFileError, LabelsError

_SYNSET_LINE = re.compile(r"^n\d{8}\s+(\S.*)$")
_INDEX_SPACE_LINE = re.compile(r"^\s*([+-]?\d+)\s+(\S.*)$")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_HEADER_WORDS = {"label", "labels", "name", "names", "class", "classes", "class_name", "classname"}
_SYNSET_ID = re.compile(r"^n\d{8}$")


class Labels(list):
    """Class names in class-index order (a plain list of str), with the synset ids when the file had them."""

    def __init__(self, names: Sequence[str] = (), synsets: Sequence[str] | None = None):
        super().__init__(names)
        if synsets is not None and len(synsets) != len(self):
            raise ValueError(f"{len(synsets)} synset ids for {len(self)} labels")
        self.synsets: list[str] | None = list(synsets) if synsets is not None else None


def load_labels(path: str | os.PathLike) -> Labels:
    """Read a label file; returns the class names in class-index order (synset ids in `.synsets`)."""
    text = _read_text(Path(path))
    synsets = None
    if text.lstrip()[:1] in ("[", "{"):
        labels = _parse_json(text, path)
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        labels = _parse_lines(lines, text, path)
        if _is_synset_file(lines):
            synsets = [line.split(maxsplit=1)[0] for line in lines]
    if not labels:
        raise LabelsError(f"label file {path} holds no labels; put one class name per line")
    return Labels(labels, synsets)


def _is_synset_file(lines: list[str]) -> bool:
    content = [line for line in lines if line.strip()]
    return bool(content) and all(_SYNSET_LINE.match(line.strip()) for line in content)


def label_names(label: str) -> list[str]:
    """The ways a label line can be written, lower-cased: whole, and each comma-separated synonym
    ("tabby, tabby cat" -> "tabby, tabby cat", "tabby", "tabby cat")."""
    whole = " ".join(label.split()).lower()
    names = [whole]
    for part in whole.split(","):
        part = part.strip()
        if part and part not in names:
            names.append(part)
    return names


def resolve_class(
    given: str,
    labels: Sequence[str] | None,
    num_classes: int,
    synsets: Sequence[str] | None = None,
    option: str = "--class",
) -> int:
    """The class index that `given` names: an index, a synset id, a whole label or one of its synonyms, in any
    case. Raises CamcaffeError naming close matches when it names none, or the candidates when it names several."""
    text = " ".join(str(given).split())
    if re.fullmatch(r"[+-]?\d+", text):
        index = int(text)
        if not 0 <= index < num_classes:
            raise CamcaffeError(f"{option} {given}: index out of range 0..{num_classes - 1}")
        return index
    if not labels:
        raise CamcaffeError(
            f"{option} {given!r}: the model has no labels, so classes can only be named by index 0..{num_classes - 1} "
            "(or give --labels)"
        )
    wanted = text.lower()
    if synsets and _SYNSET_ID.match(wanted):
        matches = [i for i, synset in enumerate(synsets) if synset.lower() == wanted]
    else:
        matches = [i for i, label in enumerate(labels) if wanted in label_names(label)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = "; ".join(f"{i} '{labels[i]}'" + (f" ({synsets[i]})" if synsets else "") for i in matches[:5])
        raise CamcaffeError(
            f"{option} {given!r} names {len(matches)} classes ({shown}); give the index"
            + (" or the synset id" if synsets else "")
        )
    raise CamcaffeError(
        f"{option} {given!r}: no such label{_suggestions(wanted, labels)}; {_how_to_name(synsets)}"
    )


def _suggestions(wanted: str, labels: Sequence[str]) -> str:
    import difflib

    names = {name: index for index, label in enumerate(labels) for name in label_names(label)}
    close = difflib.get_close_matches(wanted, list(names), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (close: " + ", ".join(f"'{name}' = {names[name]}" for name in close) + ")"


def _how_to_name(synsets: Sequence[str] | None) -> str:
    ids = ", a synset id" if synsets else ""
    return f"give a label, one of its comma-separated names{ids} or a class index"


def check_label_count(labels: Sequence[str], num_classes: int, path: str | os.PathLike) -> None:
    """Raise LabelsError unless there is exactly one label per class of the classifier."""
    if len(labels) != num_classes:
        raise LabelsError(
            f"label file {path} has {len(labels)} labels but the classifier has {num_classes} classes; "
            "pass the label file that belongs to this model"
        )


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputFileError(f"label file {path} does not exist; check the path")
    if path.is_dir():
        raise InputFileError(f"label file {path} is a folder; pass a text, CSV or JSON file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"label file {path} cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(
            f"label file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    if not text.strip():
        raise LabelsError(f"label file {path} is empty; put one class name per line")
    return text


def _parse_json(text: str, path: str | os.PathLike) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelsError(f"label file {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise LabelsError(f"label file {path} must hold a JSON list of class names")
    for i, item in enumerate(data):
        if not isinstance(item, str) or not item.strip():
            raise LabelsError(f"label file {path}: entry {i} is {item!r}, not a non-empty string")
    return [item.strip() for item in data]


def _parse_lines(lines: list[str], text: str, path: str | os.PathLike) -> list[str]:
    content = [line for line in lines if line.strip()]
    if all(_SYNSET_LINE.match(line.strip()) for line in content):
        _require_no_blank(lines, path)
        return [_SYNSET_LINE.match(line.strip()).group(1).strip() for line in lines]
    if _looks_like_index_csv(content):
        return _parse_index_csv(text, path)
    if all(_INDEX_SPACE_LINE.match(line) for line in content):
        pairs = []
        for number, line in enumerate(lines, start=1):
            match = _INDEX_SPACE_LINE.match(line)
            if match:
                pairs.append((int(match.group(1)), match.group(2).strip(), number))
        return _order_by_index(pairs, path)
    if lines and lines[0].strip().lower() in _HEADER_WORDS:
        lines = lines[1:]
    _require_no_blank(lines, path)
    return [line.strip() for line in lines]


def _require_no_blank(lines: list[str], path: str | os.PathLike) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise LabelsError(
                f"label file {path}: line {number} is blank, which would shift every later class index; "
                "remove it"
            )


def _looks_like_index_csv(content: list[str]) -> bool:
    """True when every data line is `integer,...` (the first line may be a header), or a header names an
    `index` column."""
    if content and "index" in {cell.strip().strip('"').lower() for cell in content[0].split(",")[:2]}:
        return "," in content[0]
    rows = content[1:] if content and not _INTEGER.match(content[0].split(",", 1)[0]) else content
    return bool(rows) and all("," in row and _INTEGER.match(row.split(",", 1)[0]) for row in rows)


def _parse_index_csv(text: str, path: str | os.PathLike) -> list[str]:
    first = text.lstrip().splitlines()[0]
    has_header = not _INTEGER.match(first.split(",", 1)[0].strip('"'))
    import pandas as pd

    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=",",
            header=0 if has_header else None,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise LabelsError(f"label file {path} is not a valid index,label CSV ({message})") from None
    if frame.shape[1] < 2:
        raise LabelsError(f"label file {path} needs two columns index,label")
    columns = [str(c).strip().lower() for c in frame.columns]
    index_col = columns.index("index") if has_header and "index" in columns else 0
    label_candidates = [i for i, c in enumerate(columns) if c in _HEADER_WORDS] if has_header else []
    label_col = label_candidates[0] if label_candidates else (1 if index_col == 0 else 0)
    line_offset = 2 if has_header else 1
    pairs = []
    for row_number, (index_text, label) in enumerate(
        zip(frame.iloc[:, index_col], frame.iloc[:, label_col], strict=True)
    ):
        line = row_number + line_offset
        if not _INTEGER.match(index_text):
            raise LabelsError(f"label file {path}: line {line} index {index_text!r} is not an integer")
        pairs.append((int(index_text), label.strip(), line))
    return _order_by_index(pairs, path)


def _order_by_index(pairs: list[tuple[int, str, int]], path: str | os.PathLike) -> list[str]:
    """[(index, label, line)] -> labels ordered by index; indices must be exactly 0..K-1."""
    by_index: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for index, label, line in pairs:
        if index < 0:
            raise LabelsError(
                f"label file {path}: line {line} has negative index {index}; indices start at 0"
            )
        if index in by_index:
            raise LabelsError(
                f"label file {path}: index {index} appears twice (lines {first_line[index]} and {line}); "
                "each class index must be listed once"
            )
        if not label:
            raise LabelsError(f"label file {path}: line {line} (index {index}) has an empty label")
        by_index[index] = label
        first_line[index] = line
    count = len(by_index)
    for expected in range(count):
        if expected not in by_index:
            raise LabelsError(
                f"label file {path}: index {expected} is missing (largest index is {max(by_index)}); "
                f"indices must run 0..{count - 1} without gaps"
            )
    return [by_index[i] for i in range(count)]
