"""`evaluate` end to end: read a cam run's results, score them against ground truth (ILSVRC rules), and with a
model recompute the maps as the run did for the saliency metrics; write evaluation.json."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from camcaffe.engines.results import read_cam_settings
from camcaffe.errors import CamcaffeError


@dataclass
class EvaluateOptions:
    """What `camcaffe evaluate` was asked, with the command line's defaults."""

    results: Path
    gt: Path
    labels: Path | None = None
    guesses: str = "first"
    ignore_missing: bool = False
    json: Path | None = None
    model: Path | None = None
    resize: str | None = None
    method: str | None = None
    feature_layer: str | None = None
    fc_layer: str | None = None
    steps: int = 32
    pointing_tolerance: int = 15  # pixels, as Zhang et al.
    batch_size: int = 32
    provider: str = "auto"
    quiet: bool = False

    @classmethod
    def from_namespace(cls, namespace: Any) -> EvaluateOptions:
        values = {f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)}
        return cls(**values)


def _class_resolver(options: EvaluateOptions, rows: list[dict], session):
    """Class names from --labels, else the labels (and synset ids) embedded in --model or in the model the cam
    run used, else the labels results.csv mentions."""
    from camcaffe.localize.evaluate import ClassResolver

    if options.labels is not None:
        from camcaffe.runtime.labels import load_labels

        labels, source = load_labels(options.labels), str(options.labels)
    elif session is not None and session.info.labels:
        from camcaffe.runtime.describe import embedded_labels

        labels, source = embedded_labels(session.info.metadata), f"the labels of {options.model}"
    else:
        labels, source = _labels_of_the_run_model(options.results)
    if labels:
        synsets = dict(enumerate(labels.synsets)) if labels.synsets else None
        return ClassResolver(dict(enumerate(labels)), True, source, synsets)
    seen = {}
    for row in rows:
        if str(row.get("class_index", "")).strip():
            seen[int(row["class_index"])] = row.get("label") or ""
    return ClassResolver(seen, False, "results.csv")


def _labels_of_the_run_model(results: Path):
    """(labels, where from) embedded in the model cam_settings.json names, or (None, '') when it is gone."""
    from camcaffe.runtime.describe import embedded_labels, model_metadata

    model = read_cam_settings(results).get("model")
    if not model or not Path(model).is_file():
        return None, ""
    try:
        return embedded_labels(model_metadata(model)), f"the labels of {model} (from cam_settings.json)"
    except CamcaffeError:
        return None, ""


def run_evaluate(options: EvaluateOptions) -> int:
    """Score a cam run against ground truth; with a model, also the saliency metrics. Prints the table."""
    from camcaffe.atomic import write_json_atomic
    from camcaffe.localize.evaluate import evaluate_clsloc, format_table, read_results, saliency_metrics, warn
    from camcaffe.localize.groundtruth import load_groundtruth

    if options.steps < 1:
        raise CamcaffeError(f"--steps must be a positive integer, got {options.steps}")
    if options.batch_size < 1:
        raise CamcaffeError(f"--batch-size must be a positive integer, got {options.batch_size}")
    if options.pointing_tolerance < 0:
        raise CamcaffeError(f"--pointing-tolerance must be >= 0, got {options.pointing_tolerance}")
    rows = read_results(options.results)
    groundtruth = load_groundtruth(options.gt)
    session = None
    if options.model is not None:
        from camcaffe.runtime.session import ModelSession

        session = ModelSession(options.model, options.provider)
    resolver = _class_resolver(options, rows, session)
    result = evaluate_clsloc(
        groundtruth, rows, resolver, options.guesses, ignore_missing=options.ignore_missing
    )
    if result.unknown_classes:
        warn(
            f"ground-truth class(es) {', '.join(result.unknown_classes[:5])} match no label in results.csv "
            "(counted as misses); give --labels to check them"
        )
    if result.missing:
        warn(
            f"{len(result.missing)} image(s) with ground truth have no results (counted wrong): {result.missing[0]} ..."
        )
    if session is not None:
        from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
        from camcaffe.localize.evaluate import guesses_by_image

        run = read_cam_settings(options.results)
        pre = run.get("preprocess") or {}
        mean_image = None
        if pre.get("mean_file"):
            from camcaffe.runtime.preprocess import load_mean_file

            mean_image = load_mean_file(pre["mean_file"])
        overrides = Preprocess(
            pre.get("mean"),
            mean_image,
            pre.get("raw_scale"),
            pre.get("channel_swap"),
            pre.get("input_scale"),
            pre.get("std"),
        )
        if pre.get("settled"):  # the run recorded its whole recipe: use it, whatever the model's metadata says
            if pre.get("model_mean_image"):
                overrides.mean_image = session.info.mean_image()
            preprocess = overrides
        else:  # a run written before cam_settings.json held the settled recipe: flags over the metadata
            preprocess, _ = preprocess_from_metadata(session, overrides)
        resize = options.resize or (run.get("resize") if run.get("resize") in ("warp", "crop", "torchvision") else "warp")
        pipeline = CamPipeline(
            session,
            preprocess,
            CamSettings(
                top_k=1,
                resize=resize,
                resize_filter=run.get("resize_filter") if resize == run.get("resize") else None,
                method=options.method or run.get("method") or "cam",
                batch_size=options.batch_size,
                layout=run.get("layout"),
                score=run.get("score") or "logit",
                input_size=tuple(run["input_size"]) if run.get("input_size") else None,
            ),
            feature_layer=options.feature_layer or run.get("feature_layer"),
            fc_layer=options.fc_layer or run.get("fc_layer"),
        )
        guesses, paths, _ = guesses_by_image(rows)
        paths = {
            key: path for key, path in paths.items() if key in guesses
        }  # not the images cam could not read
        classes = {o.cls for objects in groundtruth.values() for o in objects}
        result.saliency = saliency_metrics(
            pipeline,
            groundtruth,
            {c: resolver.resolve(c) for c in classes},
            paths,
            steps=options.steps,
            tolerance=options.pointing_tolerance,
            batch_size=options.batch_size,
        )
    print(format_table(result))
    results_file = options.results / "results.csv" if options.results.is_dir() else options.results
    target = options.json or results_file.parent / "evaluation.json"
    write_json_atomic(target, result.json())
    if not options.quiet:
        print(f"camcaffe: wrote {target}", file=sys.stderr)
    return 0
