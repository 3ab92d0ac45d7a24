"""Shared helpers of the benchmark scripts: paths to ../shared, converted models, photos, figures, RSS."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAMCAFFE_SHARED", ROOT.parent / "shared"))
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
THREADS = 2
PREPROCESS = {"mean": [104.0, 117.0, 123.0], "raw_scale": 255.0, "channel_swap": [2, 1, 0]}

# name -> (deploy prototxt, caffemodel), relative to ../shared
MODELS = {
    "googlenet_cam": ("golden/googlenet_cam/deploy.prototxt", "golden/googlenet_cam/weights.caffemodel"),
    "squeezenet_v1.0": (
        "data/models/squeezenet_v1.0/deploy.prototxt",
        "data/models/squeezenet_v1.0/weights.caffemodel",
    ),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def require_shared(script: str) -> None:
    """Exit 0 with a clear message when ../shared (models, photos) is absent: nothing to measure."""
    needed = [SHARED / "data" / "images"] + [SHARED / p for pair in MODELS.values() for p in pair]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(
            f"{script}: SKIPPED - the reference data folder {SHARED} is absent or incomplete "
            f"(missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}). "
            "Put the shared data next to the project (../shared) or set CAMCAFFE_SHARED.",
            file=sys.stderr,
        )
        sys.exit(0)


def set_threads() -> None:
    """Same thread count for every engine: OpenCV (dnn and image ops) gets THREADS; ORT sessions set theirs."""
    import cv2

    cv2.setNumThreads(THREADS)


def model_files(name: str) -> tuple[Path, Path]:
    prototxt, caffemodel = MODELS[name]
    return SHARED / prototxt, SHARED / caffemodel


def converted_model(name: str) -> Path:
    """The camcaffe conversion of a model with the classic ImageNet preprocessing recorded (re-done each run)."""
    from camcaffe.convert.api import Preprocessing, convert_files

    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{name}.onnx"
    prototxt, caffemodel = model_files(name)
    convert_files(prototxt, caffemodel, out, preprocessing=Preprocessing(**PREPROCESS))
    return out


def photos() -> list[Path]:
    return sorted(p for p in (SHARED / "data" / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def copy_photos(folder: Path) -> list[Path]:
    """Copy the photos to a temporary folder (decoding them is real work each time)."""
    out = []
    for path in photos():
        target = folder / path.name
        shutil.copyfile(path, target)
        out.append(target)
    return out


def cycle(items: list, count: int, start: int = 0) -> list:
    return [items[(start + i) % len(items)] for i in range(count)]


def make_pipeline(onnx_path: Path, write_overlays: bool = False):
    """(session, pipeline) exactly as the issue prescribes: ModelSession on CPU with THREADS threads."""
    from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
    from camcaffe.runtime.session import ModelSession

    session = ModelSession(onnx_path, "cpu", threads=THREADS)
    preprocess, _ = preprocess_from_metadata(session, Preprocess())
    return session, CamPipeline(session, preprocess, CamSettings(top_k=1, write_overlays=write_overlays))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def latency_stats(latencies: list[float], batch: int) -> dict:
    total = sum(latencies)
    return {
        "batches": len(latencies),
        "images": len(latencies) * batch,
        "images_per_s": round(len(latencies) * batch / total, 2),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 2),
        "p95_ms": round(percentile(latencies, 95) * 1e3, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1e3, 2),
    }


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _jiffies() -> tuple[int, int, int]:
    """(busy jiffies of the whole machine, all jiffies, jiffies of this process and its threads)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:9]]
    with open("/proc/self/stat") as handle:
        own = handle.read().rsplit(")", 1)[1].split()
    total = sum(fields)
    return total - fields[3] - fields[4], total, int(own[11]) + int(own[12])


class CpuMonitor:
    """How much of the machine OTHER processes used while a measurement ran (0 = quiet machine).

    On a shared 2-core machine another process taking one core stalls ONNX Runtime's 2-thread pool (each
    parallel op waits for its slowest thread), so every figure is reported next to this number."""

    def __enter__(self) -> CpuMonitor:
        self.start = _jiffies()
        self.other_pct = 0.0
        return self

    def __exit__(self, *exc) -> None:
        busy, total, own = (b - a for a, b in zip(self.start, _jiffies(), strict=True))
        self.other_pct = round(100.0 * max(busy - own, 0) / max(total, 1), 1)


_WAIT_BUDGET_S = [180.0]  # all waits of one script together, so a busy machine cannot stall the suite


def wait_for_quiet(max_wait_s: float = 60.0, threshold_pct: float = 10.0, window_s: float = 2.0) -> float:
    """Wait (up to max_wait_s, and at most 180 s per script in all) until other processes use < threshold_pct
    of the CPUs; returns the last reading."""
    import time

    began = time.monotonic()
    deadline = began + min(max_wait_s, _WAIT_BUDGET_S[0])
    told = False
    while True:
        with CpuMonitor() as monitor:
            time.sleep(window_s)
        if monitor.other_pct < threshold_pct or time.monotonic() > deadline:
            break
        if not told:
            print(
                f"  machine busy: other processes use {monitor.other_pct} % of the CPUs; waiting up to "
                f"{max_wait_s:.0f} s for a quiet machine",
                flush=True,
            )
            told = True
    _WAIT_BUDGET_S[0] = max(0.0, _WAIT_BUDGET_S[0] - (time.monotonic() - began))
    if monitor.other_pct >= threshold_pct:
        print(f"  still busy ({monitor.other_pct} %): measuring anyway, figures are flagged", flush=True)
    return monitor.other_pct


def write_results(stem: str, figures: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(figures, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown.rstrip() + "\n")


def target(name: str, value: float, goal: str, met: bool, note: str = "") -> dict:
    """One row of the targets table in summary.md."""
    return {"target": name, "value": value, "goal": goal, "met": bool(met), "note": note}


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"camcaffe-bench-{prefix}-")
