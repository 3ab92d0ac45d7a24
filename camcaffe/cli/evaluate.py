"""`camcaffe evaluate RESULTS --gt GT`: ILSVRC classification / localisation error of a `cam` run, and with
`--model` the gradient-free saliency metrics (pointing game, deletion / insertion AUC, average drop)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from camcaffe.errors import CamcaffeError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="localisation error and saliency metrics of a 'cam' run against ground-truth boxes",
        description="Score results.csv of 'camcaffe cam' against ground-truth boxes (ILSVRC rules: right class "
        "and IoU >= 0.5 with a box of that class, top-1 and top-5); prints a table and writes JSON.",
    )
    parser.add_argument("results", type=Path, help="results.csv of 'camcaffe cam', or its folder")
    parser.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="ground truth: a folder of PASCAL VOC / ILSVRC XML files, or a CSV image,class,x0,y0,x1,y1",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        help="label file of the model (checks every ground-truth class; default: the model's, or the "
        "labels results.csv mentions)",
    )
    parser.add_argument(
        "--guesses",
        choices=["first", "combine"],
        default="first",
        help="first: each ranked class with its first box (default); combine: the CAM authors' "
        "bboxCombine list (two boxes of classes 1-2, one of class 3; needs --boxes dt results)",
    )
    parser.add_argument(
        "--ignore-missing",
        action="store_true",
        help="score only the ground-truth images that results.csv lists (default: the others count as wrong)",
    )
    parser.add_argument(
        "--json", type=Path, help="write the figures here (default: evaluation.json next to results.csv)"
    )
    parser.add_argument(
        "--model", type=Path, help="the ONNX model of the run: also compute the saliency metrics"
    )
    parser.add_argument(
        "--resize",
        choices=["warp", "crop"],
        default=None,
        help="--model: how images become the input (default: the cam run's, from its cam_settings.json, else warp)",
    )
    parser.add_argument(
        "--method", default=None, help="--model: the saliency method (default: the cam run's, else cam)"
    )
    parser.add_argument("--feature-layer", help="--model: the feature layer (default: the cam run's)")
    parser.add_argument("--fc-layer", help="--model: the classifier layer (default: the cam run's)")
    parser.add_argument(
        "--steps", type=int, default=32, help="--model: deletion/insertion steps (default 32)"
    )
    parser.add_argument(
        "--pointing-tolerance",
        type=int,
        default=0,
        help="--model: pointing game tolerance in pixels (Zhang et al.: 15)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="--model: perturbed inputs per inference batch"
    )
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    parser.set_defaults(run=run)


def _labels(args: argparse.Namespace, rows: list[dict], session):
    from camcaffe.localize.evaluate import ClassResolver

    if args.labels is not None:
        from camcaffe.localize.evaluate import synset_ids
        from camcaffe.runtime.labels import load_labels

        labels = dict(enumerate(load_labels(args.labels)))
        return ClassResolver(labels, True, str(args.labels), synset_ids(args.labels))
    if session is not None and session.info.labels:
        return ClassResolver(dict(enumerate(session.info.labels)), True, f"the labels of {args.model}")
    seen = {}
    for row in rows:
        if str(row.get("class_index", "")).strip():
            seen[int(row["class_index"])] = row.get("label") or ""
    return ClassResolver(seen, False, "results.csv")


def run(args: argparse.Namespace) -> int:
    from camcaffe.atomic import write_json_atomic
    from camcaffe.localize.evaluate import evaluate_clsloc, format_table, read_results, saliency_metrics, warn
    from camcaffe.localize.groundtruth import load_groundtruth

    if args.steps < 1:
        raise CamcaffeError(f"--steps must be a positive integer, got {args.steps}")
    if args.batch_size < 1:
        raise CamcaffeError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.pointing_tolerance < 0:
        raise CamcaffeError(f"--pointing-tolerance must be >= 0, got {args.pointing_tolerance}")
    rows = read_results(args.results)
    groundtruth = load_groundtruth(args.gt)
    session = None
    if args.model is not None:
        from camcaffe.runtime.session import ModelSession

        session = ModelSession(args.model, args.provider)
    resolver = _labels(args, rows, session)
    result = evaluate_clsloc(groundtruth, rows, resolver, args.guesses, ignore_missing=args.ignore_missing)
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

        run = _cam_settings(args.results)
        pre = run.get("preprocess") or {}
        mean_image = None
        if pre.get("mean_file"):
            from camcaffe.runtime.preprocess import load_mean_file

            mean_image = load_mean_file(pre["mean_file"])
        overrides = Preprocess(
            pre.get("mean"), mean_image, pre.get("raw_scale"), pre.get("channel_swap"), pre.get("input_scale")
        )
        preprocess, _ = preprocess_from_metadata(session, overrides)
        resize = args.resize or (run.get("resize") if run.get("resize") in ("warp", "crop") else "warp")
        pipeline = CamPipeline(
            session,
            preprocess,
            CamSettings(
                top_k=1,
                resize=resize,
                method=args.method or run.get("method") or "cam",
                batch_size=args.batch_size,
            ),
            feature_layer=args.feature_layer or run.get("feature_layer"),
            fc_layer=args.fc_layer or run.get("fc_layer"),
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
            steps=args.steps,
            tolerance=args.pointing_tolerance,
            batch_size=args.batch_size,
        )
    print(format_table(result))
    results_file = args.results / "results.csv" if args.results.is_dir() else args.results
    target = args.json or results_file.parent / "evaluation.json"
    write_json_atomic(target, result.json())
    if not getattr(args, "quiet", False):
        print(f"camcaffe: wrote {target}", file=sys.stderr)
    return 0


def _cam_settings(results: Path) -> dict:
    """The cam run's settings (cam_settings.json beside results.csv), or {} for runs that have none."""
    import json

    folder = results if results.is_dir() else results.parent
    path = folder / "cam_settings.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CamcaffeError(f"{path}: cannot be read ({exc}); delete it or rerun 'camcaffe cam'") from None
    return settings if isinstance(settings, dict) else {}
