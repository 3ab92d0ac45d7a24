"""`camcaffe cam MODEL.onnx INPUT... --out DIR`: class activation maps, boxes, overlays, results.csv."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from camcaffe.cli.convert import _floats, _ints
from camcaffe.errors import CamcaffeError, InputFileError

EXIT_SOME_FAILED = 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cam",
        help="compute class activation maps, boxes and overlays for images",
        description="Run a converted model on images and write CAM overlays, boxes and a results table.",
    )
    parser.add_argument("model", type=Path, help="ONNX file written by 'camcaffe convert' (or caffe2onnx)")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    parser.add_argument("--labels", type=Path, help="label file (default: the labels embedded by convert)")
    parser.add_argument("--feature-layer", help="feature blob to map (default: detected CAM head)")
    parser.add_argument("--fc-layer", help="classifier layer (default: detected CAM head)")
    parser.add_argument("--top-k", type=int, default=None, help="map the K most probable classes (default 1)")
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="NAME|INDEX",
        help="map this class (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default 8)")
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel pipelines (default: one per CPU core, up to 4; 1 on a GPU)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="heat map weight in overlays (default 0.5)")
    parser.add_argument(
        "--box-threshold",
        type=float,
        default=0.2,
        help="box around the region above this fraction of the map's maximum (default 0.2)",
    )
    parser.add_argument(
        "--resize",
        choices=["warp", "crop"],
        default="warp",
        help="warp: resize the whole image to the input (caffe.io); crop: resize to 256, centre crop",
    )
    parser.add_argument(
        "--crops",
        type=int,
        default=1,
        choices=[1, 10],
        help="10: the CAM demo's oversampling (256 resize, 4 corners + centre, mirrored), maps merged",
    )
    parser.add_argument(
        "--method",
        default="cam",
        metavar="NAME",
        help="saliency method: cam (default; needs global average pooling + a linear classifier), gradcam, "
        "gradcam++, layercam (gradients of the pre-softmax class score), scorecam (masked inputs, "
        "--batch-size per forward), ablationcam, eigencam (class-agnostic); the non-CAM methods work on any "
        "classifier, on --feature-layer (default: the CAM feature, else the last convolution)",
    )
    parser.add_argument(
        "--boxes",
        default="threshold",
        metavar="KIND",
        help="threshold: largest region above --box-threshold (the paper's heuristic, default); "
        "dt: the CAM authors' released box generator",
    )
    parser.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="local (default) or ray (Ray Data)"
    )
    parser.add_argument(
        "--address", help="--engine ray: the Ray cluster to join (default: start one locally)"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="--engine ray: inference actors")
    parser.add_argument(
        "--gpus-per-worker", type=float, default=None, help="--engine ray: GPUs per inference actor"
    )
    parser.add_argument("--save-npy", action="store_true", help="also save raw CAMs as <stem>_cam.npy")
    parser.add_argument("--no-overlays", action="store_true", help="skip writing overlay images")
    parser.add_argument("--json", action="store_true", help="also write results.json")
    parser.add_argument(
        "--report", action="store_true", help="also write report.html (see 'camcaffe report') into --out"
    )
    parser.add_argument("--mean", type=lambda t: _floats(t, "--mean"), help="override the model's mean")
    parser.add_argument("--mean-file", type=Path, help="override with a mean image (.binaryproto/.npy)")
    parser.add_argument("--raw-scale", type=float, help="override raw scale")
    parser.add_argument(
        "--channel-swap", type=lambda t: _ints(t, "--channel-swap"), help="override channel swap"
    )
    parser.add_argument("--input-scale", type=float, help="override input scale")
    parser.set_defaults(run=run)


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputFileError(f"{out}: exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise InputFileError(f"{out}: output folder is not writable; choose another --out")


def _write_results(out: Path, rows: list[dict], as_json: bool) -> None:
    import pandas as pd

    from camcaffe.atomic import write_atomic, write_json_atomic
    from camcaffe.engines.pipeline import RESULT_COLUMNS

    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    write_atomic(out / "results.csv", lambda handle: frame.to_csv(handle, index=False))
    if as_json:
        write_json_atomic(out / "results.json", rows)


SETTINGS_FILE = "cam_settings.json"


def _write_settings(job, args: argparse.Namespace) -> None:
    """What `camcaffe evaluate --model` needs to recompute this run's maps the same way."""
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
            "preprocess": {
                "mean": None if pre.mean is None else [float(v) for v in pre.mean],
                "mean_file": None if args.mean_file is None else str(args.mean_file),
                "raw_scale": pre.raw_scale,
                "channel_swap": None if pre.channel_swap is None else [int(v) for v in pre.channel_swap],
                "input_scale": pre.input_scale,
            },
        },
    )


def build_job(args: argparse.Namespace):
    """Validate the flags and describe the job; (job, first session, workers, preprocessing assumed)."""
    from camcaffe.engines.inputs import expand_inputs, output_stems
    from camcaffe.engines.job import CamJob
    from camcaffe.engines.pipeline import CamSettings, Preprocess, preprocess_from_metadata
    from camcaffe.runtime.session import ModelSession

    if args.batch_size <= 0:
        raise CamcaffeError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise CamcaffeError(f"--alpha must lie in [0, 1], got {args.alpha}")
    if not 0.0 <= args.box_threshold <= 1.0:
        raise CamcaffeError(f"--box-threshold must lie in [0, 1], got {args.box_threshold}")
    if args.crops not in (1, 10):
        raise CamcaffeError(f"--crops must be 1 or 10, got {args.crops}")
    if args.crops == 10 and args.resize != "warp":
        raise CamcaffeError("--crops 10 makes its own crops of a 256 resize; drop --resize crop")
    if args.top_k == 0 and not args.classes:
        raise CamcaffeError("--top-k 0 maps no class; give at least one --class or a positive --top-k")
    from camcaffe.runtime.preprocess import max_image_pixels

    max_image_pixels()  # a bad CAMCAFFE_MAX_IMAGE_PIXELS is one fatal error, not one per image
    top_k = args.top_k if args.top_k is not None else (0 if args.classes else 1)
    from camcaffe.engines.workers import default_workers
    from camcaffe.runtime.session import choose_providers

    workers, threads = default_workers(choose_providers(args.provider)[0])
    if args.workers is not None:
        if args.workers <= 0:
            raise CamcaffeError(f"--workers must be a positive integer, got {args.workers}")
        workers, threads = args.workers, max(1, (os.cpu_count() or 1) // args.workers)
    session = ModelSession(args.model, args.provider, threads=threads)
    labels = None
    if args.labels is not None:
        from camcaffe.runtime.labels import load_labels

        labels = load_labels(args.labels)
    mean_image = None
    if args.mean_file is not None:
        from camcaffe.runtime.preprocess import load_mean_file

        mean_image = load_mean_file(args.mean_file)
    preprocess, assumed = preprocess_from_metadata(
        session, Preprocess(args.mean, mean_image, args.raw_scale, args.channel_swap, args.input_scale)
    )
    settings = CamSettings(
        top_k=top_k,
        classes=list(args.classes),
        alpha=args.alpha,
        box_threshold=args.box_threshold,
        save_npy=args.save_npy,
        write_overlays=not args.no_overlays,
        resize="tencrop" if args.crops == 10 else args.resize,
        method=args.method,
        boxes=args.boxes,
        batch_size=args.batch_size,
    )
    paths, problems = expand_inputs(args.inputs)
    if not paths:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise InputFileError(f"no images found in {' '.join(args.inputs)}{detail}")
    for problem in problems:
        print(f"camcaffe: warning: {problem}", file=sys.stderr)
    job = CamJob(
        model=args.model,
        preprocess=preprocess,
        settings=settings,
        provider=args.provider,
        threads=threads,
        labels=labels,
        labels_source=str(args.labels) if args.labels is not None else None,
        feature_layer=args.feature_layer,
        fc_layer=args.fc_layer,
        batch_size=args.batch_size,
        out=args.out,
        json=args.json,
        paths=paths,
        stems=output_stems(paths),
    )
    return job, session, workers, assumed


def run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "quiet", False)
    job, session, workers, assumed = build_job(args)
    pipeline = job.make_pipeline(session)  # validates labels, classes, head before any output exists
    _prepare_out_dir(job.out)
    _write_settings(job, args)
    if assumed and not quiet:
        print(
            "camcaffe: warning: the model carries no preprocessing metadata; assuming Caffe ImageNet defaults "
            "(BGR, 0-255, mean 104,117,123); override with --mean/--raw-scale/--channel-swap",
            file=sys.stderr,
        )
    if not quiet:
        print(
            f"camcaffe: {len(job.paths)} image(s), provider {session.provider_used}, "
            f"{job.settings.method.upper() if job.settings.method != 'cam' else 'CAM'} of "
            f"'{pipeline.head.feature_blob}' by '{pipeline.head.fc_node}'",
            file=sys.stderr,
        )
    if args.engine == "ray":
        try:
            from camcaffe.engines.ray_engine import run_ray
        except ImportError as exc:
            raise CamcaffeError(
                f"--engine ray needs Ray ({exc}); install it with: pip install 'camcaffe[ray]'"
            ) from None
        code = run_ray(
            job,
            address=args.address,
            num_workers=args.num_workers,
            gpus_per_worker=args.gpus_per_worker,
            quiet=quiet,
        )
    else:
        code = run_local(job, pipeline, workers, quiet)
    if args.report:
        from camcaffe.output.report import write_report

        write_report(job.out / "results.csv", job.out / "report.html", quiet=quiet)
    return code


def run_local(job, pipeline, workers: int, quiet: bool) -> int:
    """The single-process engine: one pipeline per worker thread, results.csv at the end."""
    from camcaffe.engines.pipeline import error_row
    from camcaffe.engines.workers import PipelinePool

    rows: list[dict] = []
    failed = 0
    from tqdm import tqdm

    paths = job.paths
    show_bar = len(paths) > 1 and not quiet and sys.stderr.isatty()
    progress = tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not show_bar)
    session = pipeline.session
    pool = PipelinePool.build(
        pipeline,
        lambda: job.make_pipeline(job.make_session(model=session.model)),
        workers if len(paths) > job.batch_size else 1,
    )

    def record(outcomes) -> None:
        nonlocal failed
        for outcome in outcomes:
            if outcome.error:
                failed += 1
                rows.append(error_row(outcome))
                progress.write(f"camcaffe: warning: skipped {outcome.error}", file=sys.stderr)
            else:
                rows.extend(outcome.rows)
        progress.update(len(outcomes))

    try:
        for outcomes in pool.map(job.batches(), job.out):
            record(outcomes)
    except KeyboardInterrupt:
        # Batches already running finish (their files are complete) and are listed; none is half-listed.
        for outcomes in pool.stop():
            record(outcomes)
        progress.close()
        _write_results(job.out, rows, job.json)
        done = len({r["image"] for r in rows})
        print(
            f"camcaffe: interrupted; {job.out / 'results.csv'} lists the {done} image(s) finished",
            file=sys.stderr,
        )
        raise
    pool.close()
    progress.close()
    _write_results(job.out, rows, job.json)
    if not quiet:
        print(
            f"camcaffe: wrote {job.out / 'results.csv'}: {len(paths) - failed} image(s) done, {failed} failed",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else 0
