"""`camcaffe cam --engine ray`: the CAM pipeline distributed with Ray Data.

The Ray layer only distributes work; every value is computed by `CamPipeline`, as in the local engine:

1. the job's images, in batches of `--batch-size` (one dataset row per batch, in input order), form a
   Ray Dataset;
2. `ray.data.Dataset.map` tasks decode and preprocess them (`CamPipeline.prepare`, i.e. `load`) and ship
   the net inputs plus the photo's pixels for the overlay as uint8 (a float image only when uint8 would
   not give it back exactly);
3. a pool of actors, each holding one ONNX Runtime session (one GPU each when the cluster has GPUs),
   runs `CamPipeline.finish_batch` (inference, maps, boxes, overlays) and writes the batch's rows as a
   Parquet shard named after its images (`camcaffe.shards`), atomically;
4. the driver consolidates the shards into results.csv (and results.json), in input order.

Resuming: images that already have rows in `OUT/shards` are skipped. Fault tolerance: actors are
restarted and their batches redone (Ray's `max_restarts`/`max_task_retries`); a redone batch rewrites
the same shard, so no row is lost or doubled."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from camcaffe.engines.job import CamJob
from camcaffe.engines.pipeline import CamPipeline, PreparedBatch, error_row
from camcaffe.engines.shards import (
    done_images,
    merge_rows,
    ordered_rows,
    read_results,
    read_shard,
    shard_name,
    write_shard,
)
from camcaffe.errors import CamcaffeError, InputFileError

if importlib.util.find_spec("ray") is None:  # `camcaffe cam --engine ray` turns this into the install hint
    raise ImportError("No module named 'ray'")

EXIT_SOME_FAILED = 1
SHARDS_FOLDER = "shards"
FINGERPRINT_FILE = "_job.json"  # "_": Parquet readers skip it
KILL_ENV = "CAMCAFFE_RAY_TEST_KILL_AFTER_BATCHES"  # test hook: one actor exits after N batches, once
DELAY_ENV = "CAMCAFFE_RAY_TEST_BATCH_DELAY_S"  # test hook: actors sleep this long per batch (interrupt tests)
KILL_MARKER = ".test-kill-marker"
MAX_RESTARTS = 3  # per actor; a batch is retried as often
_UNIT = np.float32(1.0 / 255.0)


# --- transport between the decode tasks and the actors ---------------------------------------------------
def _pack_image(image: np.ndarray) -> tuple[str, np.ndarray]:
    """The image `CamPipeline.load` gave (uint8 pixels as they are; a float image in [0, 1] as uint8
    pixels when they give it back exactly, else as floats)."""
    if image.dtype != np.float32:
        return "raw", image
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if np.array_equal(pixels.astype(np.float32) * _UNIT, image):
        return "u8", pixels
    return "f32", image


def _unpack_image(kind: str, data: np.ndarray) -> np.ndarray:
    return data.astype(np.float32) * _UNIT if kind == "u8" else data


def pack_batch(prepared: PreparedBatch) -> bytes:
    images = [None if image is None else _pack_image(image) for image in prepared.images]
    state = {
        "paths": [str(p) for p in prepared.paths],
        "stems": prepared.stems,
        "images": images,
        "inputs": prepared.inputs,
        "errors": prepared.errors,
    }
    return pickle.dumps(state, protocol=5)


def unpack_batch(payload: bytes) -> PreparedBatch:
    state = pickle.loads(payload)
    return PreparedBatch(
        [Path(p) for p in state["paths"]],
        state["stems"],
        [None if item is None else _unpack_image(*item) for item in state["images"]],
        state["inputs"],
        state["errors"],
    )


# --- worker side -----------------------------------------------------------------------------------------
_DECODERS: dict[str, CamPipeline] = {}


def _enter(cwd: str, threads: int) -> None:
    """Relative image/output paths mean what they meant on the driver (shared filesystem assumed), and
    OpenCV (decoding, resizing, overlays) uses only this worker's share of the cores."""
    if os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    import cv2

    if cv2.getNumThreads() != threads:
        cv2.setNumThreads(threads)


def _decoder(token: str, job: CamJob) -> CamPipeline:
    """One CPU pipeline per worker process and run, for `load` (its session is never run here)."""
    pipeline = _DECODERS.get(token)
    if pipeline is None:
        _DECODERS.clear()
        pipeline = _DECODERS[token] = job.make_pipeline(job.make_session(threads=1, provider="cpu"))
    return pipeline


def decode_batch(row: dict[str, Any], job: CamJob, token: str, cwd: str) -> dict[str, Any]:
    """Ray Data map: one batch of image paths -> its prepared batch, packed."""
    _enter(cwd, 1)
    prepared = _decoder(token, job).prepare([Path(p) for p in row["paths"]], list(row["stems"]))
    return {"batch": row["batch"], "payload": pack_batch(prepared)}


class CamActor:
    """Ray Data callable class: inference, maps, boxes, overlays and the shard of each batch."""

    def __init__(
        self,
        job: CamJob,
        threads: int,
        cwd: str,
        kill_after: int | None = None,
        kill_marker: str = "",
        delay_s: float = 0.0,
    ):
        _enter(cwd, threads)
        self.job = job
        self.pipeline = job.make_pipeline(job.make_session(threads=threads))
        self.shard_dir = Path(job.out) / SHARDS_FOLDER
        self.kill_after = kill_after
        self.kill_marker = kill_marker
        self.delay_s = delay_s
        self.batches = 0

    def _maybe_die(self) -> None:
        """Test hook: after `kill_after` batches, the first actor to get here exits (the marker file,
        created exclusively, keeps its replacement and the other actors alive)."""
        if self.kill_after is None or self.batches <= self.kill_after:
            return
        try:
            fd = os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        result: dict[str, list] = {"batch": [], "shard": [], "images": [], "failed": [], "errors": []}
        for number, payload in zip(batch["batch"], batch["payload"], strict=True):
            self.batches += 1
            prepared = unpack_batch(bytes(payload))
            outcomes = self.pipeline.finish_batch(prepared, Path(self.job.out))
            rows: list[dict] = []
            errors: list[str] = []
            for outcome in outcomes:
                if outcome.error:
                    errors.append(outcome.error)
                    rows.append(error_row(outcome))
                else:
                    rows.extend(outcome.rows)
            self._maybe_die()  # mid-batch: overlays written, shard not yet
            if self.delay_s:
                time.sleep(self.delay_s)
            name = shard_name(prepared.paths)
            write_shard(self.shard_dir / name, rows)
            result["batch"].append(int(number))
            result["shard"].append(name)
            result["images"].append(len(outcomes))
            result["failed"].append(len(errors))
            result["errors"].append("\n".join(errors))
        return result


# --- driver side -----------------------------------------------------------------------------------------
_NOT_RESULTS = {"batch_size"}  # settings that change how the work is cut, not what it computes


def job_fingerprint(job: CamJob) -> dict:
    """What makes results differ: the model file, preprocessing, settings, labels, head layers."""
    digest = hashlib.sha256()
    try:
        with open(job.model, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InputFileError(f"{job.model}: cannot read the model ({exc.strerror})") from None
    pre = job.preprocess
    mean_image = None
    if pre.mean_image is not None:
        mean_image = hashlib.sha256(np.ascontiguousarray(pre.mean_image).tobytes()).hexdigest()
    labels = None if job.labels is None else hashlib.sha256("\n".join(job.labels).encode()).hexdigest()
    return json.loads(
        json.dumps(
            {
                "model_sha256": digest.hexdigest(),
                "preprocess": {
                    "mean": pre.mean,
                    "mean_image_sha256": mean_image,
                    "raw_scale": pre.raw_scale,
                    "channel_swap": pre.channel_swap,
                    "input_scale": pre.input_scale,
                    "std": pre.std,
                },
                "settings": {
                    k: v for k, v in dataclasses.asdict(job.settings).items() if k not in _NOT_RESULTS
                },
                "labels_sha256": labels,
                "feature_layer": job.feature_layer,
                "fc_layer": job.fc_layer,
            },
            sort_keys=True,
            default=str,
        )
    )


def _check_fingerprint(shard_dir: Path, job: CamJob) -> None:
    from camcaffe.atomic import write_json_atomic

    path = shard_dir / FINGERPRINT_FILE
    current = job_fingerprint(job)
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != current:
            keys = (
                sorted(k for k in current if previous.get(k) != current[k])
                if isinstance(previous, dict)
                else ["unreadable job.json"]
            )
            raise CamcaffeError(
                f"{shard_dir}: holds results of another job (differs in: {', '.join(keys)}); "
                f"use another --out, or delete {shard_dir} to start over"
            )
        return
    if any(shard_dir.glob("part-*.parquet")):
        raise CamcaffeError(
            f"{shard_dir}: holds result shards but no {FINGERPRINT_FILE}; use another --out, or delete "
            f"{shard_dir} to start over"
        )
    write_json_atomic(path, current)


def _connect(address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray (loopback only, no dashboard); True when
    this call started Ray (and the caller should shut it down). RAY_ADDRESS counts as --address."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        # A local instance uses the loopback address for every server (read when Ray is first imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "configure_logging": True,
    }
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, _node_ip_address="127.0.0.1", **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at --address {address}" if address else "a local Ray instance"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CamcaffeError(
            f"cannot start or join {where} ({first}); check the address or 'ray status'"
        ) from None
    return True


def _with_retries(method, retry_args: dict[str, int], **kwargs):
    """`method(**kwargs, **retry_args)`: bounded retries, so that an image that crashes a worker every
    time fails the job instead of looping. Ray Data deprecates these free-form remote arguments (2.60);
    where a version refuses them, its own defaults (unbounded retries) apply."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            return method(**kwargs, **retry_args)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        return method(**kwargs)


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = DataContext.get_current()
    context.enable_progress_bars = False  # camcaffe's own bar counts images
    context.print_on_execution_start = False
    context.verbose_stats_logs = False


def _check_flags(num_workers: int | None, gpus_per_worker: float | None) -> None:
    if num_workers is not None and num_workers <= 0:
        raise CamcaffeError(f"--num-workers must be a positive integer, got {num_workers}")
    if gpus_per_worker is not None and gpus_per_worker <= 0:
        raise CamcaffeError(f"--gpus-per-worker must be positive, got {gpus_per_worker:g}")


def plan_workers(
    cluster: dict[str, float], provider: str, num_workers: int | None, gpus_per_worker: float | None
) -> tuple[int, float, float, int]:
    """(actors, CPUs per actor, GPUs per actor, ONNX Runtime threads per actor) for a cluster's resources.

    GPUs: one actor per `gpus_per_worker` GPUs (default 1 GPU each when the cluster has GPUs and the
    provider allows CUDA). CPUs only: half of the cluster's CPUs run the decode tasks, the other half
    is shared by the actors (default: one actor per 4 CPUs, at least one); a session has one thread
    per CPU of its actor (a thread pool larger than the cores it gets stalls on every op)."""
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    _check_flags(num_workers, gpus_per_worker)
    if gpus_per_worker is None and gpus > 0 and provider != "cpu":
        gpus_per_worker = 1.0
    if gpus_per_worker:
        workers = num_workers or max(1, int(gpus // gpus_per_worker))
        if workers * gpus_per_worker > gpus + 1e-9:
            raise CamcaffeError(
                f"--gpus-per-worker {gpus_per_worker:g} x {workers} worker(s) needs "
                f"{workers * gpus_per_worker:g} GPU(s) but the Ray cluster has {gpus:g}; "
                "lower --num-workers/--gpus-per-worker or leave them out"
            )
        actor_cpus = min(1.0, cpus / (2 * workers))
        return workers, actor_cpus, gpus_per_worker, max(1, int(cpus // (2 * workers)))
    workers = num_workers or max(1, int(cpus // 4))
    actor_cpus = cpus / (2 * workers)
    return workers, actor_cpus, 0.0, max(1, round(actor_cpus))


def _blocks(batches: int, cpus: float) -> int:
    """Dataset blocks: small enough that decode tasks stream, at most 4 batches per block."""
    return max(1, min(batches, max(int(4 * cpus), math.ceil(batches / 4))))


def _finish(job: CamJob, chosen: dict[str, list[dict]]) -> tuple[int, int]:
    """Write results.csv (+ results.json) from the shards' rows; (images done, images failed)."""
    from camcaffe.engines.results import write_results

    rows = ordered_rows(chosen, job.paths)
    write_results(job.out, rows, job.json)
    listed = [chosen[str(p)] for p in job.paths if str(p) in chosen]
    failed = sum(1 for group in listed if group[0].get("error"))
    return len(listed) - failed, failed


def run_ray(
    job: CamJob,
    address: str | None = None,
    num_workers: int | None = None,
    gpus_per_worker: float | None = None,
    quiet: bool = False,
) -> int:
    """Run a CAM job on Ray Data; same outputs as the local engine plus `OUT/shards/*.parquet`.
    Exit code 0, or 1 when some images could not be read."""
    _check_flags(num_workers, gpus_per_worker)
    out = Path(job.out)
    shard_dir = out / SHARDS_FOLDER
    try:
        shard_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"{shard_dir}: cannot create the shard folder ({exc.strerror})") from None
    _check_fingerprint(shard_dir, job)
    chosen = read_results(shard_dir)
    done = done_images(chosen)
    pending = [i for i, path in enumerate(job.paths) if str(path) not in done]
    if len(pending) < len(job.paths) and not quiet:
        print(
            f"camcaffe: resuming: {len(job.paths) - len(pending)} image(s) already in {shard_dir}, "
            f"{len(pending)} to do",
            file=sys.stderr,
        )
    if pending:
        _run_pending(job, pending, chosen, shard_dir, address, num_workers, gpus_per_worker, quiet)
    ok, failed = _finish(job, chosen)
    missing = len(job.paths) - ok - failed
    if missing:
        raise CamcaffeError(
            f"{out / 'results.csv'}: {missing} image(s) have no result; rerun the same command to finish them"
        )
    if not quiet:
        print(
            f"camcaffe: wrote {out / 'results.csv'}: {ok} image(s) done, {failed} failed "
            f"(shards in {shard_dir})",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else 0


def _run_pending(
    job: CamJob,
    pending: list[int],
    chosen: dict[str, list[dict]],
    shard_dir: Path,
    address: str | None,
    num_workers: int | None,
    gpus_per_worker: float | None,
    quiet: bool,
) -> None:
    from camcaffe.engines.progress import Progress

    started = _connect(address)
    import ray

    previous_handler = None
    try:
        _quiet_ray_data()
        workers, actor_cpus, actor_gpus, threads = plan_workers(
            ray.cluster_resources(), job.provider, num_workers, gpus_per_worker
        )
        size = job.batch_size
        items = []
        for number, start in enumerate(range(0, len(pending), size)):
            chunk = pending[start : start + size]
            items.append(
                {
                    "batch": number,
                    "paths": [str(job.paths[i]) for i in chunk],
                    "stems": [job.stems[i] for i in chunk],
                }
            )
        light = dataclasses.replace(job, paths=[], stems=[])
        cwd = os.getcwd()
        kill_after = os.environ.get(KILL_ENV)
        marker = shard_dir / KILL_MARKER
        if kill_after:
            marker.unlink(missing_ok=True)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        dataset = ray.data.from_items(items, override_num_blocks=_blocks(len(items), cpus))
        dataset = _with_retries(
            dataset.map,
            {"max_retries": MAX_RESTARTS},
            fn=decode_batch,
            fn_kwargs={"job": light, "token": uuid.uuid4().hex, "cwd": cwd},
            num_cpus=1,
        )
        results = _with_retries(
            dataset.map_batches,
            {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS},
            fn=CamActor,
            fn_constructor_kwargs={
                "job": light,
                "threads": threads,
                "cwd": cwd,
                "kill_after": int(kill_after) if kill_after else None,
                "delay_s": float(os.environ.get(DELAY_ENV) or 0.0),
                "kill_marker": str(marker.resolve()),
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=actor_cpus,
            num_gpus=actor_gpus or None,
        )
        if not quiet:
            kind = f"{actor_gpus:g} GPU" if actor_gpus else f"{threads} thread(s)"
            print(
                f"camcaffe: Ray: {len(items)} batch(es) on {workers} actor(s) ({kind} each)",
                file=sys.stderr,
            )
        progress = Progress(len(pending), quiet=quiet)
        began = time.perf_counter()
        # Ray Data's iterator may swallow a KeyboardInterrupt raised inside it and end the iteration early;
        # our own handler remembers the Ctrl-C so that such a run still ends as interrupted (exit 130).
        interrupted = threading.Event()
        if threading.current_thread() is threading.main_thread():

            def on_sigint(signum, frame):
                interrupted.set()
                raise KeyboardInterrupt

            previous_handler = signal.signal(signal.SIGINT, on_sigint)
        processed = 0
        try:
            for row in results.iter_rows():
                merge_rows(chosen, read_shard(shard_dir / str(row["shard"])))
                for error in str(row["errors"]).split("\n") if row["errors"] else []:
                    progress.write(f"camcaffe: warning: skipped {error}")
                processed += int(row["images"])
                progress.update(int(row["images"]))
                if interrupted.is_set():
                    raise KeyboardInterrupt
            if interrupted.is_set():
                raise KeyboardInterrupt
            if processed < len(pending):
                raise ray.exceptions.RayError(
                    f"the dataset ended after {processed} of {len(pending)} image(s)"
                )
        except KeyboardInterrupt:
            progress.close()
            chosen.clear()
            chosen.update(read_results(shard_dir))
            ok, failed = _finish(job, chosen)
            print(
                f"camcaffe: interrupted; {job.out / 'results.csv'} lists the {ok + failed} image(s) finished; "
                "rerun the same command to do the rest",
                file=sys.stderr,
            )
            raise
        except ray.exceptions.RayError as exc:
            progress.close()
            chosen.clear()
            chosen.update(read_results(shard_dir))
            _finish(job, chosen)
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise CamcaffeError(
                f"the Ray job failed ({first[:300]}); finished images are in {job.out / 'results.csv'}, "
                "rerun the same command to do the rest"
            ) from None
        progress.close()
        if not quiet:
            elapsed = time.perf_counter() - began
            print(
                f"camcaffe: Ray: {len(pending)} image(s) in {elapsed:.1f} s "
                f"({len(pending) / max(elapsed, 1e-9):.1f} images/s)",
                file=sys.stderr,
            )
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        if started:
            ray.shutdown()
