"""Conversion speed and peak memory: GoogLeNet-CAM, VGG16-CAM and an AlexNet-size model.

Each conversion runs in a fresh child process; the figures are the wall time of convert_files()
and the child's peak RSS (also shown after imports, so the converter's own share is visible).
Random weights come from the project's test helper; ../shared provides the deploy files."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CACHE = ROOT / "bench" / ".cache"

# VmHWM (peak resident set of this address space) rather than ru_maxrss, which Linux carries over
# from the parent across fork/exec.
CHILD = r"""
import json, sys, time
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from camcaffe.convert.api import convert_files
base = hwm_mb()
start = time.perf_counter()
convert_files(sys.argv[1], sys.argv[2], sys.argv[3])
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_rss_mb": hwm_mb(), "rss_after_imports_mb": base}))
"""

MODELS = {
    "googlenet_cam": ("golden/googlenet_cam/deploy.prototxt", "golden/googlenet_cam/weights.caffemodel"),
    "vgg16_cam": ("data/models/vgg16_cam/deploy.prototxt", None),
    "alexnet_size": ("data/models/bvlc_alexnet/deploy.prototxt", None),
}


def ensure_weights(name: str, prototxt: Path, weights: str | None) -> Path:
    if weights is not None:
        return SHARED / weights
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}.caffemodel"
    if not path.exists():
        from camcaffe.convert.random_model import write_random_caffemodel

        write_random_caffemodel(prototxt, path, seed=0)
    return path


def run(repeats: int = 3) -> list[dict]:
    results = []
    for name, (prototxt_rel, weights_rel) in MODELS.items():
        prototxt = SHARED / prototxt_rel
        if not prototxt.exists():
            print(f"skip {name}: {prototxt} not present", file=sys.stderr)
            continue
        caffemodel = ensure_weights(name, prototxt, weights_rel)
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(prototxt), str(caffemodel), f"{tmp}/m.onnx"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(json.loads(out.stdout))
        best = min(runs, key=lambda r: r["seconds"])
        size_mb = caffemodel.stat().st_size / 2**20
        results.append(
            {
                "model": name,
                "caffemodel_mb": round(size_mb, 1),
                "seconds_best": round(best["seconds"], 3),
                "seconds_all": [round(r["seconds"], 3) for r in runs],
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
                "rss_after_imports_mb": round(best["rss_after_imports_mb"], 1),
                "peak_rss_over_caffemodel": round(max(r["peak_rss_mb"] for r in runs) / size_mb, 2),
            }
        )
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | caffemodel MB | convert s (best of 3) | peak RSS MB | RSS after imports MB | peak / caffemodel |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['caffemodel_mb']} | {r['seconds_best']} | {r['peak_rss_mb']} | "
            f"{r['rss_after_imports_mb']} | {r['peak_rss_over_caffemodel']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    figures = run()
    table = markdown(figures)
    print(table)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "convert.json").write_text(json.dumps(figures, indent=1))
    (out / "convert.md").write_text(table + "\n")
