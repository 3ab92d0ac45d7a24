"""`make reproduce` / `python -m camcaffe.cli.reproduce`: the CAM paper's ILSVRC 2012 validation protocol, end to
end, printed beside the paper's figures (Zhou et al. 2016, GoogLeNet-GAP on ILSVRC val).

convert (when the ONNX file is missing) -> `cam --crops 10 --boxes dt --top-k 5` (the authors' 10-crop
merge and box generator) -> `evaluate` (ILSVRC rules, top-1 and top-5). Differences from the authors' run
that remain: caffe.io resizing instead of MATLAB's imresize, a per-channel mean instead of the mean image,
and heat maps passed to the box generator without the JPEG round trip."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from camcaffe.errors import CamcaffeError, InputFileError

# Table 2 / Table 1 of the paper: GoogLeNet-GAP on ILSVRC 2012 val, error in percent.
PAPER = {
    "classification": {"top1": 35.0, "top5": 13.2},
    "localisation": {"top1": 56.40, "top5": 43.00},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m camcaffe.cli.reproduce",
        description="Reproduce the CAM paper's ILSVRC localisation figures.",
    )
    parser.add_argument("--images", type=Path, required=True, help="ILSVRC 2012 validation images (folder)")
    parser.add_argument(
        "--annotations", type=Path, required=True, help="ILSVRC 2012 validation XML boxes (folder)"
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="the GoogLeNet-CAM ONNX file (written if missing)"
    )
    parser.add_argument("--prototxt", type=Path, help="deploy prototxt, to convert when --model is missing")
    parser.add_argument("--weights", type=Path, help="caffemodel, to convert when --model is missing")
    parser.add_argument("--labels", type=Path, required=True, help="synset_words.txt (ILSVRC class order)")
    parser.add_argument("--out", type=Path, default=Path("out/reproduce"), help="output folder")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (sorted by name)")
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser


def _require(path: Path | None, what: str, hint: str) -> Path:
    if path is None or not path.exists():
        raise InputFileError(f"{path}: {what} not found; {hint}")
    return path


def _run_cli(argv: list[str]) -> int:
    from camcaffe.cli import main

    code = main(argv)
    if code not in (0, 1):  # 1: some images failed and are listed; evaluate counts them wrong
        raise CamcaffeError(f"'camcaffe {argv[1] if argv[0] == '-q' else argv[0]}' failed (exit code {code})")
    return code


def comparison_table(figures: dict) -> str:
    lines = [f"{'GoogLeNet-GAP, ILSVRC val (error %)':<38}{'paper':>9}{'ours':>9}"]
    for metric in ("classification", "localisation"):
        for top in ("top1", "top5"):
            ours = figures[f"{metric}_error"][top] * 100.0
            lines.append(
                f"{metric + ' ' + top.replace('top', 'top-'):<38}{PAPER[metric][top]:>9.2f}{ours:>9.2f}"
            )
    lines.append(f"images: {figures['images']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        images = _require(
            args.images, "ILSVRC validation images", "pass ILSVRC_IMAGES=/path/to/ILSVRC2012_img_val"
        )
        annotations = _require(
            args.annotations, "ILSVRC validation annotations", "pass ILSVRC_ANNOTATIONS=/path/to/val_bbox_xml"
        )
        labels = _require(args.labels, "label file", "pass LABELS=synset_words.txt (1000 ILSVRC synsets)")
        args.out.mkdir(parents=True, exist_ok=True)
        if not args.model.exists():
            prototxt = _require(args.prototxt, "deploy prototxt", "run 'make weights' or pass PROTOTXT=...")
            weights = _require(args.weights, "caffemodel", "run 'make weights' or pass WEIGHTS=...")
            args.model.parent.mkdir(parents=True, exist_ok=True)
            _run_cli(
                ["-q", "convert", str(prototxt), str(weights), "-o", str(args.model), "--mean", "104,117,123",
                 "--raw-scale", "255", "--channel-swap", "2,1,0", "--labels", str(labels)]
            )  # fmt: skip
        inputs = [str(images)]
        if args.limit > 0:
            from camcaffe.engines.inputs import expand_inputs

            inputs = [str(p) for p in sorted(expand_inputs([images])[0])[: args.limit]]
        _run_cli(
            ["-q", "cam", str(args.model), *inputs, "--out", str(args.out), "--crops", "10", "--boxes", "dt",
             "--top-k", "5", "--no-overlays", "--labels", str(labels), "--provider", args.provider,
             "--batch-size", str(args.batch_size)]
        )  # fmt: skip
        report = args.out / "evaluation.json"
        evaluate = ["-q", "evaluate", str(args.out), "--gt", str(annotations), "--labels", str(labels)]
        _run_cli([*evaluate, "--json", str(report), *(["--ignore-missing"] if args.limit > 0 else [])])
        figures = json.loads(report.read_text())
    except CamcaffeError as exc:
        print(f"camcaffe reproduce: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(comparison_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
