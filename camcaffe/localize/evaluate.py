"""Localisation and saliency metrics for CAM results.

ILSVRC classification / localisation error (the CAM authors' `evaluation/eval_clsloc.m` rules): an image's
ground-truth classes are the distinct classes of its boxes; for each of them, a guess (class, box) among the
first n is right for classification when its class is that class, and for localisation when moreover its box
overlaps some ground-truth box of that class with IoU >= 0.5 (inclusive pixel boxes, +1 arithmetic). The
image's error is the fraction of its ground-truth classes with no right guess; the figure is the mean over
images. Guesses come from results.csv, best rank first; a guess only counts for top-n when its class's rank
is at most n (a class mapped with --class outside the top n is no guess). `combine` takes the authors'
"bboxCombine" list instead: the first two boxes of the top-1 and top-2 classes and the first of the top-3.

Gradient-free saliency metrics, with the model (the maps are recomputed through CamPipeline):
- pointing game (Zhang et al. 2016): the maximum of the map of each ground-truth class lies inside (within
  `tolerance` pixels of) a box of that class;
- deletion / insertion AUC (Petsiuk et al. 2018): the probability of the predicted class as the most salient
  net-input pixels are replaced by 0 (the mean colour after mean subtraction) / revealed over a blurred copy
  (Gaussian, 11 x 11, sigma 5), in `steps` equal steps; area under the curve over the fraction revealed;
- average drop and increase in confidence (Chattopadhyay et al. 2018): the predicted class's probability on
  the photo multiplied pixel-wise by its map, against the plain photo: mean of max(0, Y - O) / Y, and the
  share of images where O > Y, both in percent.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcaffe.errors import CamcaffeError, InputFileError
from camcaffe.localize.groundtruth import Box, GtObject, image_key

IOU_THRESHOLD = 0.5
SYNSET = re.compile(r"^n\d{8}$")


class EvaluationError(CamcaffeError):
    """Results and ground truth that cannot be evaluated together."""


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of inclusive pixel boxes (x0, y0, x1, y1), as ILSVRC computes it."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union


@dataclass(frozen=True)
class Guess:
    class_index: int
    box: Box
    rank: int  # the class's rank (1 = most probable)


@dataclass
class ImageResult:
    """Per image and per n: the fraction of its ground-truth classes missed."""

    key: str
    classes: list[str]
    cls_error: dict[int, float] = field(default_factory=dict)
    loc_error: dict[int, float] = field(default_factory=dict)
    missing: bool = False


# --- class names ------------------------------------------------------------------------------------------
def _names(label: str) -> set[str]:
    """The ways a label can be written: whole, its synset id, each comma-separated name (lower case)."""
    from camcaffe.runtime.labels import label_names

    text = label.strip()
    names = set(label_names(text))
    first, _, rest = text.partition(" ")
    if SYNSET.match(first):
        names.add(first.lower())
        names.update(label_names(rest))
    return names


class ClassResolver:
    """Ground-truth class (label, synset id nXXXXXXXX, or index) -> the class indices it names."""

    def __init__(
        self, labels: dict[int, str], complete: bool, source: str, synsets: dict[int, str] | None = None
    ):
        self.labels = labels
        self.complete = complete  # a full label file, not just the classes results.csv mentions
        self.source = source
        self._by_name: dict[str, set[int]] = {}
        for index, label in labels.items():
            for name in _names(label):
                self._by_name.setdefault(name, set()).add(index)
        for index, synset in (synsets or {}).items():
            self._by_name.setdefault(synset.lower(), set()).add(index)

    def resolve(self, cls: str) -> frozenset[int]:
        text = " ".join(cls.split())
        if re.fullmatch(r"\d+", text):
            return frozenset({int(text)})
        return frozenset(self._by_name.get(text.lower(), set()))

    def check(self, classes: Iterable[str]) -> list[str]:
        """Ground-truth classes that name no class; an error with a full label file, else returned."""
        unknown = sorted({c for c in classes if not self.resolve(c)})
        if unknown and self.complete:
            shown = ", ".join(f"'{c}'" for c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            hint = (
                " (synset ids need labels from a synset_words.txt: 'convert --labels synset_words.txt' embeds them, "
                "or give evaluate --labels synset_words.txt)"
                if any(SYNSET.match(c.strip()) for c in unknown)
                else ""
            )
            raise EvaluationError(
                f"ground-truth class {shown} matches no label in {self.source}{hint}{self._close(unknown[0])}; "
                "write classes as labels, synset ids (nXXXXXXXX) or class indices of that file"
            )
        if self.complete:
            size = len(self.labels)
            bad = sorted({c for c in classes if re.fullmatch(r"\d+", c.strip()) and int(c) >= size})
            if bad:
                raise EvaluationError(f"ground-truth class index {bad[0]} is out of range 0..{size - 1}")
        return unknown

    def _close(self, cls: str) -> str:
        import difflib

        close = difflib.get_close_matches(" ".join(cls.split()).lower(), list(self._by_name), n=3)
        return f" (close to '{cls}': {', '.join(repr(c) for c in close)})" if close else ""


def synset_ids(path: str | Path) -> dict[int, str]:
    """{class index: synset id} of a synset_words.txt-style file ("nXXXXXXXX name, name" per line), else {}."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    while lines and not lines[-1].strip():
        lines.pop()
    firsts = [line.split(maxsplit=1)[0] if line.strip() else "" for line in lines]
    if firsts and all(SYNSET.match(f) for f in firsts):
        return dict(enumerate(firsts))
    return {}


# --- results.csv ------------------------------------------------------------------------------------------
def read_results(path: str | Path) -> list[dict]:
    """Rows of results.csv (or of the results.csv inside a folder)."""
    import csv

    source = Path(path)
    if source.is_dir():
        source = source / "results.csv"
    if not source.is_file():
        raise InputFileError(f"{source}: results not found; give a results.csv written by 'camcaffe cam'")
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [
            c
            for c in ("image", "rank", "class_index", "x0", "y0", "x1", "y1")
            if c not in (reader.fieldnames or [])
        ]
        if missing:
            raise EvaluationError(
                f"{source}: lacks column(s) {', '.join(missing)}; is it a camcaffe results.csv?"
            )
        return list(reader)


def _boxes_of(row: dict) -> list[Box]:
    first = tuple(int(float(row[c])) for c in ("x0", "y0", "x1", "y1"))
    boxes = []
    for part in (row.get("boxes") or "").split(";"):
        values = part.split()
        if len(values) == 4:
            boxes.append(tuple(int(float(v)) for v in values))
    return boxes if boxes and boxes[0] == first else [first, *boxes]


def guesses_by_image(
    rows: list[dict], mode: str = "first"
) -> tuple[dict[str, list[Guess]], dict[str, str], list[str]]:
    """{image key: guesses best first}, {key: image path}, keys of images whose row is an error."""
    if mode not in ("first", "combine"):
        raise EvaluationError(f"--guesses {mode}: choose first or combine")
    grouped: dict[str, list[dict]] = {}
    paths: dict[str, str] = {}
    failed = []
    for row in rows:
        key = image_key(row["image"])
        if key in paths and paths[key] != row["image"]:
            raise EvaluationError(
                f"results name two images with the stem '{key}' ({paths[key]}, {row['image']}); ground truth "
                "is matched by stem, so evaluate them in separate runs"
            )
        paths[key] = row["image"]
        if (row.get("error") or "").strip() or not str(row.get("rank", "")).strip():
            failed.append(key)
            continue
        grouped.setdefault(key, []).append(row)
    guesses: dict[str, list[Guess]] = {}
    for key, image_rows in grouped.items():
        image_rows.sort(key=lambda r: int(float(r["rank"])))
        if mode == "first":
            guesses[key] = [
                Guess(int(r["class_index"]), _boxes_of(r)[0], int(float(r["rank"]))) for r in image_rows
            ]
        else:  # the authors' bboxCombine: c1 b1, c1 b2, c2 b1, c2 b2, c3 b1
            combined = []
            for r in image_rows:
                boxes = _boxes_of(r)
                for box in (boxes[0], boxes[1] if len(boxes) > 1 else boxes[0]):
                    combined.append(Guess(int(r["class_index"]), box, int(float(r["rank"]))))
            guesses[key] = combined[:5]
    return guesses, paths, failed


# --- ILSVRC classification and localisation ---------------------------------------------------------------
def score_image(
    objects: list[GtObject], resolved: dict[str, frozenset[int]], guesses: list[Guess], n: int
) -> tuple[float, float]:
    """(classification error, localisation error) of one image with its first n guesses."""
    usable = [g for g in guesses[:n] if g.rank <= n]
    classes = list(dict.fromkeys(o.cls for o in objects))
    cls_miss = loc_miss = 0
    for cls in classes:
        indices = resolved[cls]
        boxes = [o.box for o in objects if o.cls == cls]
        named = [g for g in usable if g.class_index in indices]
        cls_miss += not named
        loc_miss += not any(iou(g.box, b) >= IOU_THRESHOLD for g in named for b in boxes)
    return cls_miss / len(classes), loc_miss / len(classes)


@dataclass
class Evaluation:
    n_images: int = 0
    missing: list[str] = field(default_factory=list)  # ground truth without results (counted as wrong)
    unmatched_results: int = 0  # results without ground truth (ignored)
    unknown_classes: list[str] = field(default_factory=list)
    cls_error: dict[int, float] = field(default_factory=dict)
    loc_error: dict[int, float] = field(default_factory=dict)
    per_image: list[dict] = field(default_factory=list)
    saliency: dict = field(default_factory=dict)
    guesses: str = "first"

    def json(self) -> dict:
        return {
            "images": self.n_images,
            "guesses": self.guesses,
            "iou_threshold": IOU_THRESHOLD,
            "classification_error": {f"top{n}": v for n, v in self.cls_error.items()},
            "localisation_error": {f"top{n}": v for n, v in self.loc_error.items()},
            "missing_results": self.missing,
            "results_without_ground_truth": self.unmatched_results,
            "unknown_ground_truth_classes": self.unknown_classes,
            **({"saliency": self.saliency} if self.saliency else {}),
            "per_image": self.per_image,
        }


def evaluate_clsloc(
    groundtruth: dict[str, list[GtObject]],
    rows: list[dict],
    resolver: ClassResolver,
    mode: str = "first",
    tops: Sequence[int] = (1, 5),
    ignore_missing: bool = False,
) -> Evaluation:
    """ILSVRC errors over the images with ground-truth boxes (with ignore_missing, only those in the results;
    otherwise one without results counts as wrong)."""
    guesses, _, failed = guesses_by_image(rows, mode)
    result = Evaluation(guesses=mode)
    images = {k: v for k, v in groundtruth.items() if v}
    if ignore_missing:
        images = {k: v for k, v in images.items() if k in guesses or k in failed}
    if not images:
        raise EvaluationError("the ground truth holds no boxes")
    classes = {o.cls for objects in images.values() for o in objects}
    result.unknown_classes = resolver.check(classes)
    resolved = {c: resolver.resolve(c) for c in classes}
    if not set(images) & (set(guesses) | set(failed)):
        raise EvaluationError(
            f"no image of the results matches the ground truth by file stem (results e.g. "
            f"{next(iter(guesses or failed), 'none')}, ground truth e.g. {next(iter(images))})"
        )
    result.unmatched_results = len((set(guesses) | set(failed)) - set(images))
    totals_cls = dict.fromkeys(tops, 0.0)
    totals_loc = dict.fromkeys(tops, 0.0)
    for key in sorted(images):
        objects = images[key]
        entry = {"image": key, "classes": sorted({o.cls for o in objects})}
        if key not in guesses:
            result.missing.append(key)
        for n in tops:
            cls_err, loc_err = score_image(objects, resolved, guesses.get(key, []), n)
            totals_cls[n] += cls_err
            totals_loc[n] += loc_err
            entry[f"cls_error_top{n}"] = cls_err
            entry[f"loc_error_top{n}"] = loc_err
        result.per_image.append(entry)
    result.n_images = len(images)
    result.cls_error = {n: totals_cls[n] / len(images) for n in tops}
    result.loc_error = {n: totals_loc[n] / len(images) for n in tops}
    return result


# --- saliency metrics -------------------------------------------------------------------------------------
def auc(values: Sequence[float]) -> float:
    """Trapezoid area under a curve sampled at equal steps over [0, 1]."""
    curve = np.asarray(values, dtype=np.float64)
    if curve.size < 2:
        raise EvaluationError("a deletion/insertion curve needs at least two points")
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (curve.size - 1))


def perturbation_series(
    x: np.ndarray, saliency: np.ndarray, steps: int, substrate: np.ndarray, reveal: bool
) -> np.ndarray:
    """(steps + 1, C, H, W): step i has the round(i/steps * H*W) most salient pixels of x replaced by the
    substrate (deletion, reveal=False) or, starting from the substrate, taken from x (insertion)."""
    height, width = saliency.shape
    order = np.argsort(-saliency.ravel(), kind="stable")
    counts = np.round(np.linspace(0, height * width, steps + 1)).astype(np.int64)
    start, source = (substrate, x) if reveal else (x, substrate)
    series = np.repeat(start[None], steps + 1, axis=0).reshape(steps + 1, x.shape[0], -1)
    flat_source = source.reshape(x.shape[0], -1)
    for i, count in enumerate(counts):
        chosen = order[:count]
        series[i][:, chosen] = flat_source[:, chosen]
    return series.reshape(steps + 1, *x.shape)


def blurred(x: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(channel, (11, 11), 5) for channel in x.astype(np.float32)])


def pointing_hit(cam: np.ndarray, boxes: Sequence[Box], tolerance: int = 0) -> bool:
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return any(
        b[0] - tolerance <= x <= b[2] + tolerance and b[1] - tolerance <= y <= b[3] + tolerance for b in boxes
    )


def saliency_metrics(
    pipeline,
    groundtruth: dict[str, list[GtObject]],
    resolved: dict[str, frozenset[int]],
    paths: dict[str, str],
    steps: int = 32,
    tolerance: int = 0,
    batch_size: int = 32,
    progress=None,
) -> dict:
    """Pointing game, deletion / insertion AUC, average drop and increase in confidence (see module doc)."""
    from camcaffe.explain.cam import upsample
    from camcaffe.runtime.preprocess import load_image

    if pipeline.views.count != 1:
        raise EvaluationError("saliency metrics need a single-view pipeline (--resize warp or crop)")
    if steps < 1:
        raise EvaluationError(f"--steps must be a positive integer, got {steps}")
    hits = trials = 0
    deletion, insertion, drops, increases = [], [], [], []
    keys = [k for k in sorted(groundtruth) if groundtruth[k] and k in paths]
    for key in keys:
        path = Path(paths[key])
        if not path.is_file():
            raise InputFileError(
                f"{path}: image listed in results.csv not found; run evaluate from the same folder"
            )
        image = load_image(path)
        x = pipeline.net_input(image)
        probabilities, features = pipeline.infer(x[None])
        predicted = int(np.argmax(probabilities[0]))
        gt_classes = list(dict.fromkeys(o.cls for o in groundtruth[key]))
        gt_indices = [min(resolved[c]) if resolved[c] else None for c in gt_classes]
        wanted = [predicted] + [i for i in gt_indices if i is not None]
        raw = pipeline.maps(x[None], features, probabilities, np.asarray([wanted], dtype=np.int64))[0]
        height, width = image.shape[:2]
        for cls, index in zip(gt_classes, gt_indices, strict=True):
            trials += 1
            if index is None:
                continue
            cam = pipeline.to_image_space(raw[wanted.index(index)][None], height, width)[0]
            hits += pointing_hit(cam, [o.box for o in groundtruth[key] if o.cls == cls], tolerance)
        saliency = upsample(raw[0], x.shape[-2:])
        curves = []
        for substrate, reveal in ((np.zeros_like(x), False), (blurred(x), True)):
            series = perturbation_series(x, saliency, steps, substrate, reveal)
            probs = np.concatenate(
                [
                    pipeline.infer(series[i : i + batch_size])[0][:, predicted]
                    for i in range(0, len(series), batch_size)
                ]
            )
            curves.append(auc(probs))
        deletion.append(curves[0])
        insertion.append(curves[1])
        mask = pipeline.to_image_space(raw[0][None], height, width)[0]
        explained = pipeline.net_input(image * mask[:, :, None])
        before = float(probabilities[0, predicted])
        after = float(pipeline.infer(explained[None])[0][0, predicted])
        drops.append(max(0.0, before - after) / before if before > 0 else 0.0)
        increases.append(after > before)
        if progress is not None:
            progress(key)
    count = len(deletion)
    return {
        "images": count,
        "pointing_game": hits / trials if trials else None,
        "pointing_trials": trials,
        "pointing_tolerance": tolerance,
        "deletion_auc": float(np.mean(deletion)) if count else None,
        "insertion_auc": float(np.mean(insertion)) if count else None,
        "average_drop_percent": 100.0 * float(np.mean(drops)) if count else None,
        "increase_in_confidence_percent": 100.0 * float(np.mean(increases)) if count else None,
        "steps": steps,
    }


# --- report -----------------------------------------------------------------------------------------------
def format_table(result: Evaluation) -> str:
    tops = list(result.cls_error)
    head = f"{'error (%)':<22}" + "".join(f"{'top-' + str(n):>9}" for n in tops)
    lines = [head]
    for title, values in (("classification", result.cls_error), ("localisation", result.loc_error)):
        lines.append(f"{title:<22}" + "".join(f"{100 * values[n]:>9.2f}" for n in tops))
    lines.append(
        f"images: {result.n_images} with ground truth ({len(result.missing)} without results, counted wrong); "
        f"{result.unmatched_results} result image(s) without ground truth ignored; guesses: {result.guesses}"
    )
    s = result.saliency
    if s:
        pointing = "n/a" if s["pointing_game"] is None else f"{100 * s['pointing_game']:.2f} %"
        lines += [
            f"pointing game (ground-truth class, tolerance {s['pointing_tolerance']} px): {pointing} "
            f"of {s['pointing_trials']}",
            f"deletion AUC (lower is better):  {s['deletion_auc']:.4f}",
            f"insertion AUC (higher is better): {s['insertion_auc']:.4f}",
            f"average drop: {s['average_drop_percent']:.2f} %   increase in confidence: "
            f"{s['increase_in_confidence_percent']:.2f} %   ({s['images']} images, {s['steps']} steps)",
        ]
    return "\n".join(lines)


def warn(message: str) -> None:
    print(f"camcaffe: warning: {message}", file=sys.stderr)
