"""Saliency methods: time per image of each `--method` on GoogLeNet-CAM (random weights, batch 8), and
Score-CAM's masked forward passes batched (--batch-size 32) vs one by one (batch 1).

Each figure is the best of `--repeats` runs of the shared forward pass (`CamPipeline.infer`) plus the method's
`maps()` on the same preprocessed photos, divided by the number of images. Score-CAM runs one forward per
feature channel (1024 for GoogLeNet-CAM), so it is timed on `--scorecam-images` images (default 1)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BATCH = 8
DEPLOY = "data/models/googlenet_cam/deploy.prototxt"
SCORECAM_BATCHES = (32, 8, 1)
FAST_METHODS = ["cam", "gradcam", "gradcam++", "layercam", "ablationcam", "eigencam"]


def random_googlenet_cam() -> Path:
    """GoogLeNet-CAM's deploy with seeded random weights, converted with the ImageNet preprocessing (cached)."""
    from camcaffe.convert.api import Preprocessing, convert_files
    from camcaffe.convert.random_model import write_random_caffemodel

    C.CACHE.mkdir(parents=True, exist_ok=True)
    weights = C.CACHE / "googlenet_cam_random.caffemodel"
    model = C.CACHE / "googlenet_cam_random.onnx"
    if not weights.exists():
        write_random_caffemodel(C.SHARED / DEPLOY, weights, seed=0)
    convert_files(C.SHARED / DEPLOY, weights, model, preprocessing=Preprocessing(**C.PREPROCESS))
    return model


def time_method(session, inputs: np.ndarray, name: str, batch_size: int, repeats: int) -> dict:
    from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
    from camcaffe.explain.methods import MethodBatch, make_method

    preprocess, _ = preprocess_from_metadata(session, Preprocess())
    pipeline = CamPipeline(session, preprocess, CamSettings(top_k=1, method=name, batch_size=batch_size))
    method = make_method(name, session, batch_size=batch_size)
    best_forward, best_maps = float("inf"), float("inf")
    for _ in range(max(repeats, 1) + (repeats > 0)):  # the first of several runs warms up
        start = time.perf_counter()
        probabilities, features = pipeline.infer(inputs)
        classes, _ = pipeline.select_classes(probabilities)
        middle = time.perf_counter()
        maps = method.maps(MethodBatch(inputs, features, probabilities, classes))
        end = time.perf_counter()
        best_forward, best_maps = min(best_forward, middle - start), min(best_maps, end - middle)
    n = len(inputs)
    return {
        "method": name,
        "batch_size": batch_size,
        "images": n,
        "feature": method.head.feature_blob,
        "maps_shape": list(maps.shape),
        "forward_ms_per_image": round(1000 * best_forward / n, 2),
        "method_ms_per_image": round(1000 * best_maps / n, 2),
        "total_ms_per_image": round(1000 * (best_forward + best_maps) / n, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scorecam-images", type=int, default=1)
    parser.add_argument("--skip-fast", action="store_true", help="time Score-CAM only")
    args = parser.parse_args()
    C.require_shared("bench_methods.py")
    C.set_threads()
    from camcaffe.runtime.session import ModelSession

    session = ModelSession(random_googlenet_cam(), "cpu", threads=C.THREADS)
    _, pipeline = C.make_pipeline(C.CACHE / "googlenet_cam_random.onnx")
    paths = C.cycle(C.photos(), BATCH)
    inputs = np.concatenate([pipeline.load(p)[1] for p in paths])
    rows = []
    C.wait_for_quiet()
    for name in [] if args.skip_fast else FAST_METHODS:
        rows.append(time_method(session, inputs, name, 32, args.repeats))
        print(rows[-1], flush=True)
    few = inputs[: args.scorecam_images]
    for batch_size in SCORECAM_BATCHES:  # one timed run each: 1024 forwards per image are long enough
        C.wait_for_quiet()
        rows.append(time_method(session, few, "scorecam", batch_size, 0))
        print(rows[-1], flush=True)
    batched, single = rows[-len(SCORECAM_BATCHES)], rows[-1]
    speedup = round(single["method_ms_per_image"] / batched["method_ms_per_image"], 2)
    lines = [
        f"GoogLeNet-CAM (random weights), CPU, ONNX Runtime with {C.THREADS} threads; forward = the shared "
        "pass fetching the feature blob and probabilities; method = its maps() (backward tail, masked or "
        "ablated passes).",
        "",
        "| method | --batch-size | images | feature | forward ms/image | method ms/image | total ms/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['batch_size']} | {r['images']} | {r['feature']} | "
            f"{r['forward_ms_per_image']} | {r['method_ms_per_image']} | {r['total_ms_per_image']} |"
        )
    lines += ["", f"Score-CAM batched (32) vs one masked input per run (1): {speedup}x faster."]
    table = "\n".join(lines)
    print(table)
    figures = {"rows": rows, "scorecam_batched_speedup": speedup, "targets": []}
    C.write_results("methods", figures, table)


if __name__ == "__main__":
    main()
