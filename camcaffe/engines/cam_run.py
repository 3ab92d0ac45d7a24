"""The `cam` job end to end: validate the options, describe the job (CamJob), run the local or the Ray engine,
write results.csv / results.json / cam_settings.json and, when asked, the report."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from camcaffe.engines.job import CamJob
from camcaffe.engines.results import prepare_out_dir, remove_unlisted_outputs, write_results, write_settings
from camcaffe.errors import CamcaffeError, InputFileError

if TYPE_CHECKING:
    from camcaffe.engines.pipeline import Preprocess
    from camcaffe.runtime.session import ModelSession

EXIT_SOME_FAILED = 1


GRADIENT_METHODS = ("gradcam", "gradcam++", "layercam")


Options = TypeVar("Options")


def apply_preset(options: Options) -> Options:
    """`options` (CamOptions, WebOptions) with the preset's settings (runtime/presets.py) where the flag was not
    given."""
    if options.preset is None:
        return options
    from camcaffe.runtime.presets import preset

    values = {key: value for key, value in preset(options.preset).items() if getattr(options, key) is None}
    if options.mean_file is not None:
        values.pop("mean", None)  # --mean-file is the mean the user gave
    return replace(options, **values)


@dataclass
class SettledPreprocessing:
    """How a model's photos become its input, as `cam` and `web` settle it."""

    preprocess: Preprocess
    resize: str  # a views.VIEWS name
    resize_filter: str | None  # None: the view's own filter
    assumed: bool  # the model records no preprocessing and no flag gave it: ImageNet Caffe defaults


def settle_preprocessing(options: Any, session: ModelSession) -> SettledPreprocessing:
    """The preprocessing of `options` (CamOptions or WebOptions, after `apply_preset`) for this model. With
    --preset the preset is the whole recipe (a setting it leaves out, such as std, is not the model's);
    without, the model's metadata (convert/meta) with the flags given winning, else the ImageNet Caffe defaults.
    The resize is the flag, else the metadata's, else warp; the metadata's filter applies only to its own
    resize (another --resize gets that view's own filter unless --resize-filter names one)."""
    from camcaffe.engines.pipeline import Preprocess, preprocess_from_metadata

    mean_image = None
    if options.mean_file is not None:
        from camcaffe.runtime.preprocess import load_mean_file

        mean_image = load_mean_file(options.mean_file)
    given = Preprocess(
        options.mean, mean_image, options.raw_scale, options.channel_swap, options.input_scale, options.std
    )
    if options.preset is not None:
        preprocess, assumed = given, False
    else:
        preprocess, assumed = preprocess_from_metadata(session, given)
    stored = session.info.preprocess  # convert --preset / camcaffe meta: how this model wants its images
    resize = options.resize or stored.get("resize") or "warp"
    same_resize = options.resize is None or options.resize == (stored.get("resize") or "warp")
    resize_filter = options.resize_filter or (stored.get("resize_filter") if same_resize else None)
    return SettledPreprocessing(preprocess, resize, resize_filter, assumed)


@dataclass
class CamOptions:
    """What `camcaffe cam` was asked, with the command line's defaults."""

    model: Path
    inputs: list[str]
    out: Path
    labels: Path | None = None
    feature_layer: str | None = None
    fc_layer: str | None = None
    top_k: int | None = None
    classes: list[str] = field(default_factory=list)
    batch_size: int = 8
    provider: str = "auto"
    workers: int | None = None
    alpha: float = 0.5
    box_threshold: float = 0.2
    resize: str | None = None  # None: the model's metadata, else warp
    resize_filter: str | None = None  # None: the model's metadata, else the view's own
    crops: int = 1
    method: str = "cam"
    boxes: str = "threshold"
    engine: str = "local"
    address: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float | None = None
    save_npy: bool = False
    no_overlays: bool = False
    json: bool = False
    report: bool = False
    mean: list[float] | None = None
    mean_file: Path | None = None
    raw_scale: float | None = None
    channel_swap: list[int] | None = None
    input_scale: float | None = None
    std: list[float] | None = None
    input_size: list[int] | None = None
    layout: str | None = None
    score: str = "logit"
    preset: str | None = None
    quiet: bool = False

    @classmethod
    def from_namespace(cls, namespace: Any) -> CamOptions:
        """From parsed arguments (argparse.Namespace or any object with these attributes)."""
        values = {f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)}
        return cls(**values)


def build_job(options: CamOptions) -> tuple[CamJob, ModelSession, int, bool]:
    """Validate the flags and describe the job; (job, first session, workers, preprocessing assumed)."""
    from camcaffe.engines.inputs import expand_inputs, output_stems
    from camcaffe.engines.pipeline import CamSettings

    _check_crops_against_preset(options)
    options = apply_preset(options)
    if options.batch_size <= 0:
        raise CamcaffeError(f"--batch-size must be a positive integer, got {options.batch_size}")
    if not 0.0 <= options.alpha <= 1.0:
        raise CamcaffeError(f"--alpha must lie in [0, 1], got {options.alpha}")
    if not 0.0 <= options.box_threshold <= 1.0:
        raise CamcaffeError(f"--box-threshold must lie in [0, 1], got {options.box_threshold}")
    if options.crops not in (1, 10):
        raise CamcaffeError(f"--crops must be 1 or 10, got {options.crops}")
    if options.crops == 10 and options.resize not in (None, "warp"):
        raise CamcaffeError(f"--crops 10 makes its own crops of a 256 resize; drop --resize {options.resize}")
    if options.input_size is not None and (len(options.input_size) != 2 or min(options.input_size) <= 0):
        raise CamcaffeError(f"--input-size must be two positive integers H,W, got {options.input_size}")
    if options.score != "logit" and options.method not in GRADIENT_METHODS:
        raise CamcaffeError(
            f"--score {options.score} applies to the gradient methods ({', '.join(GRADIENT_METHODS)}), not "
            f"--method {options.method}"
        )
    if options.top_k == 0 and not options.classes:
        raise CamcaffeError("--top-k 0 maps no class; give at least one --class or a positive --top-k")
    from camcaffe.runtime.preprocess import max_image_pixels

    max_image_pixels()  # a bad CAMCAFFE_MAX_IMAGE_PIXELS is one fatal error, not one per image
    top_k = options.top_k if options.top_k is not None else (0 if options.classes else 1)
    from camcaffe.engines.workers import default_workers
    from camcaffe.runtime.session import choose_providers

    workers, threads = default_workers(choose_providers(options.provider)[0])
    if options.workers is not None:
        if options.workers <= 0:
            raise CamcaffeError(f"--workers must be a positive integer, got {options.workers}")
        workers, threads = options.workers, max(1, (os.cpu_count() or 1) // options.workers)
    from camcaffe.runtime.session import ModelSession

    session = ModelSession(options.model, options.provider, threads=threads)
    labels = None
    if options.labels is not None:
        from camcaffe.runtime.labels import load_labels

        labels = load_labels(options.labels)
    settled = settle_preprocessing(options, session)
    preprocess, assumed = settled.preprocess, settled.assumed
    resize, resize_filter = settled.resize, settled.resize_filter
    if options.crops == 10:
        resize, resize_filter = "tencrop", options.resize_filter
    settings = CamSettings(
        top_k=top_k,
        classes=list(options.classes),
        alpha=options.alpha,
        box_threshold=options.box_threshold,
        save_npy=options.save_npy,
        write_overlays=not options.no_overlays,
        resize=resize,
        resize_filter=resize_filter,
        method=options.method,
        boxes=options.boxes,
        batch_size=options.batch_size,
        input_size=tuple(options.input_size) if options.input_size else None,
        layout=options.layout,
        score=options.score,
    )
    paths, problems = expand_inputs(options.inputs)
    if not paths:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise InputFileError(f"no images found in {' '.join(options.inputs)}{detail}")
    for problem in problems:
        print(f"camcaffe: warning: {problem}", file=sys.stderr)
    job = CamJob(
        model=options.model,
        preprocess=preprocess,
        settings=settings,
        provider=options.provider,
        threads=threads,
        labels=labels,
        labels_source=str(options.labels) if options.labels is not None else None,
        feature_layer=options.feature_layer,
        fc_layer=options.fc_layer,
        batch_size=options.batch_size,
        out=options.out,
        json=options.json,
        paths=paths,
        stems=output_stems(paths),
    )
    return job, session, workers, assumed


def _check_crops_against_preset(options: CamOptions) -> None:
    """--crops 10 is the CAM demo's oversampling (caffe.io's 256 resize): a preset that resizes otherwise is
    refused naming the preset, not the flags it stands for."""
    if options.crops != 10 or options.preset is None:
        return
    from camcaffe.runtime.presets import preset

    recipe = preset(options.preset)
    resize = options.resize or recipe["resize"]
    resize_filter = options.resize_filter or recipe["resize_filter"]
    if resize != "warp" or resize_filter != "caffe":
        raise CamcaffeError(
            f"--crops 10 cuts its crops from caffe.io's 256 resize, but --preset {options.preset} resizes with "
            f"--resize {resize} --resize-filter {resize_filter}; drop --crops 10, or give the preset's pixel "
            "settings as flags (--mean, --std, --raw-scale, --channel-swap) instead of --preset"
        )


def unscaled_mean_warning(preprocess) -> str | None:
    """A likely slip: a 0-255 mean subtracted from pixels left in 0-1 (no raw scale); None when it is not."""
    if preprocess.raw_scale is not None or preprocess.mean is None or preprocess.std is not None:
        return None
    largest = max(abs(float(v)) for v in preprocess.mean)
    if largest <= 2.0:
        return None
    return (
        f"the mean goes up to {largest:g} but no raw scale is set, so pixels stay in 0-1 (caffe.io's default); "
        "if the model takes 0-255 pixels give --raw-scale 255 (or record it: camcaffe meta MODEL --raw-scale 255)"
    )


def run_cam(options: CamOptions) -> int:
    """The `cam` job end to end: check the options, build the job, run an engine, write the tables."""
    quiet = options.quiet
    job, session, workers, assumed = build_job(options)
    pipeline = job.make_pipeline(session)  # validates labels, classes, head before any output exists
    prepare_out_dir(job.out)
    write_settings(job, options.mean_file)
    if assumed and not quiet:
        print(
            "camcaffe: warning: the model carries no preprocessing metadata; assuming Caffe ImageNet defaults "
            "(BGR, 0-255, mean 104,117,123); override with --mean/--raw-scale/--channel-swap",
            file=sys.stderr,
        )
    unscaled = unscaled_mean_warning(job.preprocess)
    if unscaled and not quiet:
        print(f"camcaffe: warning: {unscaled}", file=sys.stderr)
    if not quiet:
        print(
            f"camcaffe: {len(job.paths)} image(s), provider {session.provider_used}, "
            f"{job.settings.method.upper() if job.settings.method != 'cam' else 'CAM'} of "
            f"'{pipeline.head.feature_blob}' by '{pipeline.head.fc_node}'"
            + (", each image at its own size" if pipeline.feed_hw is None else ""),
            file=sys.stderr,
        )
    if not quiet:
        announce_cost(pipeline, len(job.paths))
    if options.engine == "ray":
        try:
            from camcaffe.engines.ray_engine import run_ray
        except ImportError as exc:
            raise CamcaffeError(
                f"--engine ray needs Ray ({exc}); install it with: pip install 'camcaffe[ray]'"
            ) from None
        code = run_ray(
            job,
            address=options.address,
            num_workers=options.num_workers,
            gpus_per_worker=options.gpus_per_worker,
            quiet=quiet,
        )
    else:
        code = run_local(job, pipeline, workers, quiet)
    if options.report:
        from camcaffe.output.report import write_report

        write_report(job.out / "results.csv", job.out / "report.html", quiet=quiet)
    return code


@contextlib.contextmanager
def ignoring_sigint() -> Iterator[None]:
    """A second Ctrl-C while an interrupted run writes its table must not leave it half done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def announce_cost(pipeline, images: int) -> None:
    """Score-CAM and Ablation-CAM run one extra pass per feature channel: say what that costs before starting,
    and show progress inside each batch."""
    from camcaffe.engines.progress import StepLine, format_duration

    cost = pipeline.extra_cost()
    if cost is None:
        return
    passes, seconds = cost
    method = pipeline.settings.method
    print(
        f"camcaffe: {method} runs {passes} extra forward passes per image: about {format_duration(seconds)} per "
        f"image here{' at 224x224 (larger photos cost more)' if pipeline.feed_hw is None else ''}, "
        f"{format_duration(seconds * images)} for {images} image(s) (--batch-size sets how many run at once)",
        file=sys.stderr,
    )
    pipeline.method.on_step = StepLine(method)


def run_local(job, pipeline, workers: int, quiet: bool) -> int:
    """The single-process engine: one pipeline per worker thread, results.csv at the end."""
    from camcaffe.engines.pipeline import error_row
    from camcaffe.engines.workers import PipelinePool

    rows: list[dict] = []
    failed = 0
    from camcaffe.engines.progress import Progress

    paths = job.paths
    progress = Progress(len(paths), quiet=quiet)
    session = pipeline.session
    pool = PipelinePool.build(
        pipeline,
        lambda: job.make_pipeline(session.sibling(threads=job.threads)),
        workers if len(paths) > job.batch_size else 1,
    )

    def record(outcomes) -> None:
        nonlocal failed
        for outcome in outcomes:
            if outcome.error:
                failed += 1
                rows.append(error_row(outcome))
                progress.write(f"camcaffe: warning: skipped {outcome.error}")
            else:
                rows.extend(outcome.rows)
        progress.update(len(outcomes))

    try:
        for outcomes in pool.map(job.batches(), job.out):
            record(outcomes)
    except KeyboardInterrupt:
        with ignoring_sigint():
            # Batches already running finish (their files are complete) and are listed; files of an image
            # the table will not list (a Ctrl-C between a batch's end and its listing) are removed.
            for outcomes in pool.stop():
                record(outcomes)
            progress.close()
            started = [stem for _, stems in pool.started for stem in stems]
            listed_images = {row["image"] for row in rows if not row.get("error")}
            recorded = {
                stem for path, stem in zip(job.paths, job.stems, strict=True) if str(path) in listed_images
            }
            remove_unlisted_outputs(job.out, started, recorded, rows)
            write_results(job.out, rows, job.json)
            done = len({r["image"] for r in rows})
            print(
                f"camcaffe: interrupted; {job.out / 'results.csv'} lists the {done} image(s) finished",
                file=sys.stderr,
            )
        raise
    pool.close()
    progress.close()
    write_results(job.out, rows, job.json)
    if not quiet:
        print(
            f"camcaffe: wrote {job.out / 'results.csv'}: {len(paths) - failed} image(s) done, {failed} failed",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else 0
