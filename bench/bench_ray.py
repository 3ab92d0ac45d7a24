"""`camcaffe cam --engine ray` against the local engine: images/s with 1 and 2 Ray workers on this machine, the
fixed start-up cost of Ray, and what the decode -> inference hand-over ships per image.

Photos: the ../shared/data/images photos resized to 500x375 and saved as JPEG (quality 90, every other copy
mirrored), cycled to --images files. Model: GoogLeNet-CAM (real weights from ../shared/golden) or SqueezeNet
v1.0, converted with the ImageNet preprocessing. Every run writes overlays and results, as a user's job would.

Figures per run: wall time of the whole command (model load, Ray actors, results.csv), and the steady rate
between the first and the last result file written (overlays for local, shards for Ray); the fixed cost is
wall - images / steady rate. Ray's own start-up (`ray.init` of a local 2-CPU instance) is timed apart."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WIDTH, HEIGHT = 500, 375


def make_photos(folder: Path, count: int) -> list[Path]:
    import cv2

    sources = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in C.photos()]
    out = []
    for i in range(count):
        image = cv2.resize(sources[i % len(sources)], (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
        if (i // len(sources)) % 2:
            image = image[:, ::-1]
        path = folder / f"photo_{i:04d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(path)
    return out


def steady_rate(files: list[Path], images: int, per_file: float) -> tuple[float, float, float]:
    """(images/s between the first and last file written, first write time, last write time)."""
    times = sorted(p.stat().st_mtime for p in files)
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan"), times[0], times[-1]
    return (images - per_file) / (times[-1] - times[0]), times[0], times[-1]


def run_cam(model: Path, photos: Path, out: Path, extra: list[str]) -> dict:
    from camcaffe.cli import main

    quiet = C.wait_for_quiet(max_wait_s=30)
    began = time.time()
    with C.CpuMonitor() as monitor:
        code = main(["-q", "cam", str(model), str(photos), "--out", str(out), "--top-k", "1", *extra])
    wall = time.time() - began
    count = len(list(photos.glob("*.jpg")))
    if "ray" in extra:
        files = list((out / "shards").glob("part-*.parquet"))
        per_file = count / len(files)
    else:
        files = list(out.glob("*_cam.png"))
        per_file = 1.0
    rate, first, _ = steady_rate(files, count, per_file)
    return {
        "exit_code": code,
        "images": count,
        "wall_s": round(wall, 2),
        "images_per_s_wall": round(count / wall, 2),
        "images_per_s_steady": round(rate, 2),
        "first_result_s": round(first - began, 2),
        "fixed_cost_s": round(wall - count / rate, 2),
        "other_procs_cpu_pct_before": quiet,
        # during the run: every process but this one, so Ray's own workers count for the Ray modes
        "other_procs_cpu_pct_during": monitor.other_pct,
    }


def transport(model: Path, photos: list[Path], batch: int) -> dict:
    """Bytes and time to pack one batch for the actors: uint8 pixels + net inputs vs float pixels + inputs."""
    from camcaffe.engines.job import CamJob
    from camcaffe.engines.pipeline import CamSettings, Preprocess, preprocess_from_metadata
    from camcaffe.engines.ray_engine import pack_batch, unpack_batch
    from camcaffe.runtime.session import ModelSession

    session = ModelSession(model, "cpu", threads=1)
    preprocess, _ = preprocess_from_metadata(session, Preprocess())
    pipeline = CamJob(model, preprocess, CamSettings()).make_pipeline(session)
    prepared = pipeline.prepare(photos[:batch], [p.stem for p in photos[:batch]])
    began = time.perf_counter()
    for _ in range(5):
        payload = pack_batch(prepared)
    pack_ms = (time.perf_counter() - began) / 5 * 1e3
    began = time.perf_counter()
    for _ in range(5):
        unpack_batch(payload)
    unpack_ms = (time.perf_counter() - began) / 5 * 1e3
    inputs = sum(a.nbytes for a in prepared.inputs if a is not None)
    pixels = sum(a.size for a in prepared.images if a is not None)  # H x W x 3 values per image
    floats = len(pickle.dumps((prepared.inputs, [None] * batch), protocol=5)) + 4 * pixels
    began = time.perf_counter()
    for _ in range(5):
        prepared = pipeline.prepare(photos[:batch], [p.stem for p in photos[:batch]])
    prepare_ms = (time.perf_counter() - began) / 5 * 1e3
    # The actor's share, per image on one core: inference alone, then finish_batch without / with overlays.
    stack = np.concatenate([a for a in prepared.inputs if a is not None])
    pipeline.infer(stack)
    began = time.perf_counter()
    for _ in range(3):
        pipeline.infer(stack)
    infer_ms = (time.perf_counter() - began) / 3 * 1e3
    cached = pipeline.infer(stack)
    pipeline.infer = lambda _batch: cached  # finish_batch below then times only what follows inference
    finish = {}
    for overlays in (False, True):
        pipeline.settings.write_overlays = overlays
        with C.temp_dir("ray-finish") as out:
            began = time.perf_counter()
            for _ in range(3):
                pipeline.finish_batch(prepared, Path(out))
            finish[overlays] = (time.perf_counter() - began) / 3 * 1e3
    return {
        "batch": batch,
        "infer_ms_per_image_1_thread": round(infer_ms / batch, 2),
        "post_ms_per_image_no_overlay": round(finish[False] / batch, 2),
        "post_ms_per_image_with_overlay": round(finish[True] / batch, 2),
        "payload_mb_per_image_uint8": round(len(payload) / batch / 1e6, 3),
        "payload_mb_per_image_float": round(floats / batch / 1e6, 3),
        "net_inputs_mb_per_image": round(inputs / batch / 1e6, 3),
        "pack_ms_per_image": round(pack_ms / batch, 3),
        "unpack_ms_per_image": round(unpack_ms / batch, 3),
        "prepare_ms_per_image": round(prepare_ms / batch, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--model", choices=sorted(C.MODELS), default="googlenet_cam")
    parser.add_argument("--rounds", type=int, default=1, help="repeat local / ray 1 / ray 2 this many times")
    args = parser.parse_args()
    C.require_shared("bench_ray.py")
    try:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray
    except ImportError:
        print("bench_ray.py: SKIPPED - Ray is not installed (pip install 'camcaffe[ray]')", file=sys.stderr)
        return 0
    model = C.converted_model(args.model)
    figures: dict = {"model": args.model, "images": args.images, "size": f"{WIDTH}x{HEIGHT} JPEG", "runs": []}
    with C.temp_dir("ray") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        photos = make_photos(folder, args.images)
        figures["transport"] = transport(model, photos, 8)
        print("transport:", figures["transport"], flush=True)
        C.wait_for_quiet()
        began = time.perf_counter()
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        figures["ray_init_s"] = round(time.perf_counter() - began, 2)
        print(f"ray.init: {figures['ray_init_s']} s", flush=True)
        modes = [("local", []), ("ray, 1 worker", ["--engine", "ray", "--num-workers", "1"])]
        modes.append(("ray, 2 workers", ["--engine", "ray", "--num-workers", "2"]))
        for round_ in range(args.rounds):
            for name, extra in modes:
                out = Path(tmp) / f"out_{round_}_{len(figures['runs'])}"
                result = {"mode": name, "round": round_, **run_cam(model, folder, out, extra)}
                figures["runs"].append(result)
                print(result, flush=True)
        ray.shutdown()
    lines = [
        f"# Ray engine vs local engine ({args.model}, {args.images} photos {WIDTH}x{HEIGHT} JPEG, overlays on)",
        "",
        f"`ray.init` (local, {os.cpu_count()} CPUs, loopback): {figures['ray_init_s']} s",
        "",
        "| mode | wall s | images/s (wall) | images/s (steady) | first result s | fixed cost s | other procs CPU % before |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in figures["runs"]:
        lines.append(
            f"| {r['mode']} | {r['wall_s']} | {r['images_per_s_wall']} | {r['images_per_s_steady']} | "
            f"{r['first_result_s']} | {r['fixed_cost_s']} | {r['other_procs_cpu_pct_before']} |"
        )
    t = figures["transport"]
    lines += [
        "",
        f"Decode -> actor hand-over per image: {t['payload_mb_per_image_uint8']} MB with uint8 pixels "
        f"({t['payload_mb_per_image_float']} MB with float32 pixels; net inputs alone {t['net_inputs_mb_per_image']} MB); "
        f"pack {t['pack_ms_per_image']} ms, unpack {t['unpack_ms_per_image']} ms, decode + preprocess "
        f"{t['prepare_ms_per_image']} ms per image (one core). Actor side, per image on one core: inference "
        f"{t['infer_ms_per_image_1_thread']} ms, then maps + boxes {t['post_ms_per_image_no_overlay']} ms, "
        f"maps + boxes + overlay PNG {t['post_ms_per_image_with_overlay']} ms.",
    ]
    C.write_results("ray", figures, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
