"""`make bench`: run every benchmark script and print its figures (JSON + markdown in bench/results/).

Afterwards bench/results/summary.md gathers the targets of all scripts (met / missed) and their tables."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# script -> the stem of the JSON + markdown it writes to bench/results/
SCRIPTS = {
    "bench_convert.py": "convert",
    "bench_inference.py": "inference",
    "bench_cam.py": "cam",
    "bench_memory.py": "memory",
    "bench_methods.py": "methods",
    "bench_startup.py": "startup",
}
TITLES = {
    "convert": "Conversion (wall time, peak RSS; peer caffe2onnx 2.0.1)",
    "inference": "CPU inference: bare ORT (a), pipeline (b), pipeline + overlays (c), OpenCV dnn (d); FLOPs vs peak; GPU",
    "cam": "CAM alone and the pipeline's stages",
    "memory": "Memory over a 2,000-image stream",
    "methods": "Saliency methods: time per image on GoogLeNet-CAM; Score-CAM batched vs one by one",
    "startup": "Start-up of small jobs: camcaffe cam vs a minimal onnxruntime script (1 and 96 images)",
}


def summary(ran: dict[str, tuple[int, float, float]]) -> str:
    lines = [
        "# camcaffe benchmark summary",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({platform.machine()}, Python "
        f"{platform.python_version()}); scripts: "
        + ", ".join(
            f"{script} ({'ok' if rc == 0 else f'exit {rc}'}, {sec:.0f} s)"
            for script, (rc, sec, _) in ran.items()
        ),
        "",
        "## Targets",
        "",
        "| target | value | goal | met | note |",
        "|---|---|---|---|---|",
    ]
    sections = []
    for script, stem in SCRIPTS.items():
        json_path, md_path = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
        fresh = script in ran and json_path.exists() and json_path.stat().st_mtime >= ran[script][2]
        if not fresh:  # skipped (no ../shared), failed, or not run: never show figures of an earlier run
            sections.append(
                f"## {TITLES[stem]}\n\nno figures from this run (skipped or failed; see its output).\n"
            )
            continue
        figures = json.loads(json_path.read_text())
        for t in figures.get("targets", []) if isinstance(figures, dict) else []:
            lines.append(
                f"| {t['target']} | {t['value']} | {t['goal']} | {'MET' if t['met'] else '**MISSED**'} | {t['note']} |"
            )
        body = md_path.read_text() if md_path.exists() else "(no markdown written)"
        sections.append(f"## {TITLES[stem]}\n\n{body}")
    return "\n".join(lines) + "\n\n" + "\n".join(sections)


if __name__ == "__main__":
    failed = 0
    ran: dict[str, tuple[int, float, float]] = {}
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        started, start = time.time(), time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / script)]).returncode
        ran[script] = (rc, time.perf_counter() - start, started)
        failed += rc != 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(summary(ran))
    print(f"summary written to {RESULTS / 'summary.md'}")
    sys.exit(1 if failed else 0)
