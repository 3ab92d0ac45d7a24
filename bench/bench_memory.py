"""Memory over a stream of 2,000 images through the camcaffe pipeline (b) (decode, preprocess, inference,
CAM, box; no rendering), batch 8, photos of ../shared/data/images cycled.

VmRSS and VmHWM (/proc/self/status) are sampled every 100 images; a least-squares line through the RSS
samples after the warm-up gives the growth per 1,000 images. Flat: the fitted growth over the whole stream
is below FLAT_MB and the peak (VmHWM) no longer rises after the warm-up by more than FLAT_MB.

Usage: bench_memory.py [--model googlenet_cam|squeezenet_v1.0] [--images 2000]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BATCH = 8
SAMPLE_EVERY = 100
WARMUP_IMAGES = 200  # samples before this are shown but not fitted (arenas, caches, lazy imports settle)
FLAT_MB = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet_cam", choices=sorted(C.MODELS))
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    C.require_shared("bench_memory.py")
    C.set_threads()
    start_rss = C.proc_status_kb("VmRSS") / 1024
    _, pipeline = C.make_pipeline(C.converted_model(args.model))
    samples = []
    with C.temp_dir("photos") as folder:
        paths = C.copy_photos(Path(folder))
        done, next_sample, results = 0, 0, 0
        C.wait_for_quiet()
        monitor = C.CpuMonitor().__enter__()
        start = time.perf_counter()
        while done < args.images:
            count = min(BATCH, args.images - done)
            chunk = C.cycle(paths, count, start=done)
            outcomes = pipeline.process(
                chunk, [f"{p.stem}_{done + i}" for i, p in enumerate(chunk)], out_dir=None
            )
            results += sum(len(o.rows) for o in outcomes)  # consumed like a CSV writer would, then dropped
            done += count
            if done >= next_sample:
                samples.append(
                    {
                        "images": done,
                        "rss_mb": round(C.proc_status_kb("VmRSS") / 1024, 1),
                        "hwm_mb": round(C.proc_status_kb("VmHWM") / 1024, 1),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                print(
                    f"  {done:5d} images  VmRSS {samples[-1]['rss_mb']:7.1f} MB  VmHWM {samples[-1]['hwm_mb']:7.1f} MB",
                    flush=True,
                )
                next_sample = (done // SAMPLE_EVERY + 1) * SAMPLE_EVERY
        elapsed = time.perf_counter() - start
        monitor.__exit__(None, None, None)
    fitted = [s for s in samples if s["images"] >= WARMUP_IMAGES]
    x = np.array([s["images"] for s in fitted], dtype=np.float64)
    rss = np.array([s["rss_mb"] for s in fitted])
    slope_mb_per_image = float(np.polyfit(x, rss, 1)[0]) if len(fitted) >= 2 else 0.0
    growth_fit = slope_mb_per_image * (x[-1] - x[0]) if len(fitted) >= 2 else 0.0
    hwm_growth = fitted[-1]["hwm_mb"] - fitted[0]["hwm_mb"] if fitted else 0.0
    flat = abs(growth_fit) < FLAT_MB and hwm_growth < FLAT_MB
    figures = {
        "model": args.model,
        "batch": BATCH,
        "images": args.images,
        "rows_written": results,
        "seconds": round(elapsed, 1),
        "images_per_s": round(args.images / elapsed, 2),
        "other_procs_cpu_pct": monitor.other_pct,
        "rss_before_model_mb": round(start_rss, 1),
        "samples": samples,
        "rss_slope_kb_per_1000_images": round(slope_mb_per_image * 1024 * 1000, 1),
        "rss_fitted_growth_mb": round(growth_fit, 2),
        "hwm_growth_after_warmup_mb": round(hwm_growth, 1),
        "peak_rss_mb": samples[-1]["hwm_mb"],
        "flat": flat,
        "targets": [
            C.target(
                f"{args.model}: flat memory over {args.images} images (pipeline b, batch {BATCH})",
                round(slope_mb_per_image * 1024 * 1000, 1),
                f"RSS slope ~0 KB/1000 images (fitted growth and VmHWM rise < {FLAT_MB:g} MB)",
                flat,
                f"VmHWM {fitted[0]['hwm_mb'] if fitted else '?'} -> {samples[-1]['hwm_mb']} MB after "
                f"{WARMUP_IMAGES} images; fitted RSS growth {round(growth_fit, 2)} MB",
            )
        ],
    }
    lines = [
        f"{args.model}, pipeline (b), batch {BATCH}, {args.images} images in {figures['seconds']} s "
        f"({figures['images_per_s']} images/s; other processes used {monitor.other_pct} % CPU). RSS slope after {WARMUP_IMAGES} images: "
        f"{figures['rss_slope_kb_per_1000_images']} KB per 1,000 images (fitted growth over the stream "
        f"{figures['rss_fitted_growth_mb']} MB); VmHWM rise after warm-up {figures['hwm_growth_after_warmup_mb']} MB; "
        f"peak RSS {figures['peak_rss_mb']} MB; flat: {flat}.",
        "",
        "| images | VmRSS MB | VmHWM MB | s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['images']} | {s['rss_mb']} | {s['hwm_mb']} | {s['seconds']} |" for s in samples]
    table = "\n".join(lines)
    print(table)
    C.write_results("memory", figures, table)


if __name__ == "__main__":
    main()
