"""CAM alone: camcaffe.cam.compute_cams per image vs the classic per-channel Python loop, and CAM's share of
the pipeline's per-image time (a stage breakdown of CamPipeline.process at batch 8).

The features are real: GoogLeNet-CAM / SqueezeNet v1.0 run on the photos of ../shared/data/images."""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BATCH = 8
PIPELINE_BATCHES = 12  # timed batches for the stage breakdown


def classic_cam(features: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The CAM as the original scripts wrote it: one multiply-add per channel, F (C, h, w), W (K, C)."""
    cam = np.zeros(features.shape[1:], dtype=np.float32)
    for c in range(features.shape[0]):
        cam += weights[k, c] * features[c]
    return cam


def best_per_call(fn, min_seconds: float = 0.5) -> float:
    """Seconds per call: the best of 5 timeit repeats, each sized to run about min_seconds / 5."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * min_seconds / 5 / max(timer.timeit(number), 1e-9)))
    return min(timer.repeat(repeat=5, number=number)) / number


def cam_speed(name: str, paths: list[Path]) -> dict:
    from camcaffe.explain.cam import compute_cams

    _, pipeline = C.make_pipeline(C.converted_model(name))
    batch = np.concatenate([pipeline.load(p)[1] for p in C.cycle(paths, BATCH)])
    probabilities, features = pipeline.infer(batch)
    classes, _ = pipeline.select_classes(probabilities)
    weights = pipeline.head.weights
    feats1, classes1 = features[:1], classes[:1]
    k = int(classes[0, 0])
    vectorised = best_per_call(lambda: compute_cams(feats1, weights, classes1))
    batched = best_per_call(lambda: compute_cams(features, weights, classes)) / len(features)
    loop = best_per_call(lambda: classic_cam(features[0], weights, k))
    same = np.allclose(
        compute_cams(feats1, weights, classes1)[0, 0], classic_cam(features[0], weights, k), atol=1e-4
    )
    return {
        "model": name,
        "head": pipeline.head.kind,
        "features_shape": list(features.shape[1:]),
        "classifier_shape": list(weights.shape),
        "vectorised_us_per_image": round(vectorised * 1e6, 2),
        "vectorised_batch8_us_per_image": round(batched * 1e6, 2),
        "classic_loop_us_per_image": round(loop * 1e6, 1),
        "speedup": round(loop / vectorised, 1),
        "speedup_batch8": round(loop / batched, 1),
        "results_equal": bool(same),
    }


def stage_breakdown(name: str, paths: list[Path]) -> dict:
    """Per-image time of each stage of CamPipeline.process (batch 8, no overlays), by timing wrappers."""

    _, pipeline = C.make_pipeline(C.converted_model(name))
    spent: dict[str, float] = {}

    def wrap(label, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

        return timed

    pipeline.load = wrap("decode + preprocess (load)", pipeline.load)
    pipeline.infer = wrap("inference (infer)", pipeline.infer)
    pipeline.select_classes = wrap("top-k (select_classes)", pipeline.select_classes)
    pipeline.maps = wrap("CAM (compute_cams)", pipeline.maps)
    pipeline.to_image_space = wrap("CAM upsample + normalise (to_image_space)", pipeline.to_image_space)
    pipeline.boxer = wrap("box (box_from_cam)", pipeline.boxer)
    for i in range(2):  # warm-up
        chunk = C.cycle(paths, BATCH, start=i * BATCH)
        pipeline.process(chunk, [p.stem for p in chunk], out_dir=None)
    C.wait_for_quiet()
    spent.clear()
    with C.CpuMonitor() as monitor:
        start = time.perf_counter()
        for i in range(PIPELINE_BATCHES):
            chunk = C.cycle(paths, BATCH, start=i * BATCH)
            pipeline.process(chunk, [p.stem for p in chunk], out_dir=None)
        total = time.perf_counter() - start
    images = PIPELINE_BATCHES * BATCH
    stages = {label: seconds / images for label, seconds in spent.items()}
    stages["other (stacking, rows, bookkeeping)"] = total / images - sum(stages.values())
    return {
        "model": name,
        "batch": BATCH,
        "pipeline_ms_per_image": round(total / images * 1e3, 3),
        "other_procs_cpu_pct": monitor.other_pct,
        "stages_ms_per_image": {k: round(v * 1e3, 4) for k, v in stages.items()},
        "stages_pct": {k: round(100 * v / (total / images), 2) for k, v in stages.items()},
    }


def main() -> None:
    C.require_shared("bench_cam.py")
    C.set_threads()
    figures: dict = {"speed": [], "breakdown": [], "targets": []}
    with C.temp_dir("photos") as folder:
        paths = C.copy_photos(Path(folder))
        for name in C.MODELS:
            C.wait_for_quiet()
            speed = cam_speed(name, paths)
            breakdown = stage_breakdown(name, paths)
            figures["speed"].append(speed)
            figures["breakdown"].append(breakdown)
            share = breakdown["stages_pct"]["CAM (compute_cams)"]
            share_post = share + breakdown["stages_pct"]["CAM upsample + normalise (to_image_space)"]
            figures["targets"].append(
                C.target(
                    f"{name}: vectorised CAM speed-up over the per-channel loop (per image)",
                    speed["speedup"],
                    ">= 20x",
                    speed["speedup"] >= 20,
                    f"{speed['vectorised_us_per_image']} us vs {speed['classic_loop_us_per_image']} us",
                )
            )
            figures["targets"].append(
                C.target(
                    f"{name}: CAM share of the pipeline's per-image time (batch 8)",
                    share,
                    "<= 2 %",
                    share <= 2.0,
                    f"with upsample + normalise to image size: {round(share_post, 2)} %",
                )
            )
            print(speed, flush=True)
            print(breakdown, flush=True)
    lines = [
        "| model | head | features | vectorised us/image | (batch of 8) us/image | per-channel loop us/image | "
        "speed-up | same maps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in figures["speed"]:
        lines.append(
            f"| {s['model']} | {s['head']} | {'x'.join(map(str, s['features_shape']))} | "
            f"{s['vectorised_us_per_image']} | {s['vectorised_batch8_us_per_image']} | "
            f"{s['classic_loop_us_per_image']} | {s['speedup']}x | {s['results_equal']} |"
        )
    for b in figures["breakdown"]:
        lines += [
            "",
            f"Pipeline (b) stages, {b['model']}, batch {b['batch']}: {b['pipeline_ms_per_image']} ms per image "
            f"(other processes used {b['other_procs_cpu_pct']} % CPU meanwhile)",
            "",
            "| stage | ms/image | % |",
            "|---|---|---|",
        ]
        for stage, ms in b["stages_ms_per_image"].items():
            lines.append(f"| {stage} | {ms} | {b['stages_pct'][stage]} |")
    table = "\n".join(lines)
    print(table)
    C.write_results("cam", figures, table)


if __name__ == "__main__":
    main()
