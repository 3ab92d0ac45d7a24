"""`camcaffe report`: the HTML gallery, checked as text and in a real headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from camcaffe.cli import main
from camcaffe.convert.api import Preprocessing, convert_files
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.engines.pipeline import RESULT_COLUMNS
from camcaffe.errors import CamcaffeError
from camcaffe.output.report import (
    evaluation_rows,
    parse_boxes,
    relative_url,
    script_json,
    write_report,
)
from tests.helpers import net_text

NET = net_text(
    (1, 3, 32, 32),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)
LABELS = ["ant", "bee", "cat <b>", "dog</script>", "eel & co", "fox"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
WINDOW = (1280, 900)


# ----------------------------------------------------------------------------------------------------------
# Helpers


def chromium_binary() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); browser checks skipped")


def chromium(tmp_path: Path, url: str, *args: str) -> tuple[str, str]:
    """Run headless Chromium on url; (stdout, console messages). Virtual time lets the page's script run
    and lazy images load before the DOM is dumped or the screenshot taken."""
    command = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=8000",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, "\n".join(console)


def url_of(path: Path, fragment: str = "") -> str:
    return path.resolve().as_uri() + (f"#{fragment}" if fragment else "")


def attribute(dom: str, element_id: str, name: str) -> str:
    tag = re.search(rf'<[a-z]+[^>]*\bid="{element_id}"[^>]*>', dom)
    assert tag, f"no element #{element_id} in the dumped DOM"
    value = re.search(rf'\b{name}="([^"]*)"', tag.group(0))
    assert value, f"#{element_id} has no {name}: {tag.group(0)}"
    return value.group(1)


def root_attribute(dom: str, name: str) -> str | None:
    tag = re.search(r"<html[^>]*>", dom)
    assert tag
    value = re.search(rf'\b{name}="([^"]*)"', tag.group(0))
    return value.group(1) if value else None


def dump(tmp_path: Path, html_path: Path, fragment: str = "") -> str:
    dom, console = chromium(tmp_path, url_of(html_path, fragment), "--dump-dom")
    assert not console, f"console messages:\n{console}"
    assert root_attribute(dom, "data-ready") == "1", "the page's script did not finish"
    assert root_attribute(dom, "data-js-errors") is None
    return dom


def embedded_data(html_text: str) -> dict:
    blob = re.search(
        r'<script type="application/json" id="camcaffe-data">(.*?)</script>', html_text, re.DOTALL
    )
    assert blob
    return json.loads(blob.group(1))


def write_csv(path: Path, rows: list[dict], columns: list[str] = RESULT_COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def result_row(image: str, rank: int = 1, index: int = 0, p: float = 0.5, overlay: str = "", **extra) -> dict:
    row = {c: "" for c in RESULT_COLUMNS}
    row.update(image=image, rank=rank, class_index=index, label=f"class{index}", probability=p)
    row.update(x0=1, y0=2, x1=10, y1=12, overlay=overlay, **extra)
    return row


# ----------------------------------------------------------------------------------------------------------
# A real `camcaffe cam` run on a tiny random-weight net


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report_run")
    (folder / "d.prototxt").write_text(NET)
    write_random_caffemodel(folder / "d.prototxt", folder / "w.caffemodel", seed=5)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    convert_files(
        folder / "d.prototxt",
        folder / "w.caffemodel",
        folder / "m.onnx",
        preprocessing=Preprocessing(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0]),
        labels_path=folder / "labels.txt",
    )
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for n in range(5):
        picture = np.zeros((60 + 10 * n, 90, 3), np.uint8)
        picture[:] = rng.integers(40, 200, 3)
        cv2.circle(picture, (30 + 8 * n, 30), 15, (20, 220, 240), -1)
        cv2.imwrite(str(images / f"photo {n}#.png"), picture)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = folder / "out"
    code = main(["-q", "cam", str(folder / "m.onnx"), str(images), "--out", str(out), "--top-k", "3"])
    assert code == 1  # one image failed
    return out


def test_report_of_a_real_run(cam_run, capsys):
    html_path = write_report(cam_run, cam_run / "report.html")
    assert html_path == cam_run / "report.html"
    text = html_path.read_text(encoding="utf-8")
    data = embedded_data(text)
    assert len(data["items"]) == 5 and len(data["errors"]) == 1
    assert "broken.jpg" in data["errors"][0]["n"] and data["errors"][0]["e"]
    for item in data["items"]:
        assert len(item["c"]) == 3 and [c["r"] for c in item["c"]] == [1, 2, 3]
        assert item["src"].startswith("../images/photo%20") and "%23" in item["src"]  # '#' is encoded
        assert (item["w"], item["h"]) == (90, int(item["src"][len("../images/photo%20")]) * 10 + 60)
        assert item["c"][0]["o"].endswith("_cam.png") and "/" not in item["c"][0]["o"]
        assert all(c["b"] and c["l"] in LABELS for c in item["c"])
    # untrusted labels stay data: never markup, never a way out of the JSON script element
    assert "dog</script>" not in text and "cat <b>" not in text and "eel & co" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "wrote" in capsys.readouterr().err


def test_report_cli_default_output_and_errors(cam_run, tmp_path, capsys):
    assert main(["report", str(cam_run), "--title", "Run <1>"]) == 0
    text = (cam_run / "report.html").read_text(encoding="utf-8")
    assert "<title>Run &lt;1&gt;</title>" in text
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("camcaffe: error:") and "results.csv" in err and str(tmp_path) in err
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(tmp_path / "results.csv")]) == 2
    assert "no 'image' column" in capsys.readouterr().err
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    assert main(["report", str(cam_run), "-o", str(tmp_path / "r.html"), "--evaluation", str(bad)]) == 2
    assert "not valid JSON (line 1" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_report_in_headless_chromium(cam_run, tmp_path):
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"images": 5, "localisation_error": {"top1": 0.25, "top5": 0.125}}))
    # The random net never ranks "dog</script>" in a top 3: make it the first photo's top class in a copy.
    run = tmp_path / "run" / "out"
    shutil.copytree(cam_run.parent, run.parent)
    with open(run / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    next(row for row in rows if row["rank"] == "1")["label"] = "dog</script>"
    write_csv(run / "results.csv", rows)
    html_path = write_report(run, run / "browser.html", evaluation=evaluation, quiet=True)
    data = embedded_data(html_path.read_text(encoding="utf-8"))

    dom = dump(tmp_path, html_path)
    assert (
        attribute(dom, "gallery", "data-rendered") == "5" and attribute(dom, "gallery", "data-matches") == "5"
    )
    assert dom.count('<article class="card"') == 5
    assert root_attribute(dom, "data-img-failed") is None
    assert int(root_attribute(dom, "data-img-loaded") or 0) >= 2  # at least the first card's two pictures
    assert dom.count("<rect ") >= 1  # the box over the original
    assert "localisation_error › top1" in dom and "0.125" in dom
    # labels are text, never markup: the DOM shows them escaped, and no element came out of them
    assert "dog&lt;/script&gt;" in dom and "dog</script>" not in dom
    assert "cat &lt;b&gt;" in dom and "cat <b>" not in dom
    assert "broken.jpg" in dom and "1 image(s) failed" in dom
    probabilities = sorted((item["c"][0]["p"] for item in data["items"]), reverse=True)
    first = re.search(r'<article class="card" data-index="(\d+)"', dom)
    assert first and data["items"][int(first.group(1))]["c"][0]["p"] == probabilities[0]

    label = data["items"][0]["c"][0]["l"]
    wanted = sum(1 for item in data["items"] if item["c"][0]["l"] == label)
    dom = dump(tmp_path, html_path, f"class={quote(label)}&sort=name")
    assert attribute(dom, "gallery", "data-matches") == str(wanted)
    assert dom.count('<article class="card"') == wanted
    threshold = probabilities[1]
    dom = dump(tmp_path, html_path, f"minp={threshold!r}")
    assert attribute(dom, "gallery", "data-matches") == str(sum(p >= threshold for p in probabilities))

    shot = tmp_path / "report.png"
    _, console = chromium(tmp_path, url_of(html_path), f"--screenshot={shot}")
    assert not console, console
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (WINDOW[1], WINDOW[0])
    assert float(image.std()) > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 500
    shutil.copy(shot, cam_run / "screenshot.png")


# ----------------------------------------------------------------------------------------------------------
# Thousands of images: only a page's worth is in the DOM


@pytest.mark.slow
def test_three_thousand_images_render_one_page(tmp_path):
    chromium_binary()
    pixels = tmp_path / "pixels"
    pixels.mkdir()
    ok, png = cv2.imencode(".png", np.full((6, 8, 3), 128, np.uint8))
    assert ok
    rows = []
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(0.0, 1.0, 3000)
    for n, p in enumerate(probabilities):
        name = pixels / f"img{n:04d}.png"
        name.write_bytes(png.tobytes())
        rows.append(result_row(str(name), index=n % 7, p=float(p), overlay=str(name)))
        rows.append(result_row(str(name), rank=2, index=7, p=float(p) / 4))
    rows.append({**{c: "" for c in RESULT_COLUMNS}, "image": "gone.png", "error": "gone.png: no such file"})
    write_csv(tmp_path / "results.csv", rows)
    html_path = write_report(tmp_path, tmp_path / "report.html", quiet=True)
    assert len(embedded_data(html_path.read_text(encoding="utf-8"))["items"]) == 3000

    dom = dump(tmp_path, html_path)
    assert attribute(dom, "gallery", "data-matches") == "3000"
    assert attribute(dom, "gallery", "data-pages") == "125"
    assert dom.count('<article class="card"') == 24
    assert dom.count("<img ") == 48  # original + overlay per card, no more
    assert dom.count('loading="lazy"') == 48

    wanted = int((probabilities >= 0.5).sum())
    dom = dump(tmp_path, html_path, "minp=0.5&size=96&page=3&sort=prob-asc")
    assert attribute(dom, "gallery", "data-matches") == str(wanted)
    assert attribute(dom, "gallery", "data-page") == "3"
    assert dom.count('<article class="card"') == 96 and dom.count("<img ") == 192
    expected_first = int(np.argsort(np.where(probabilities >= 0.5, probabilities, 2.0), kind="stable")[192])
    first = re.search(r'<article class="card" data-index="(\d+)"', dom)
    assert first and int(first.group(1)) == expected_first

    dom = dump(tmp_path, html_path, "class=class3")
    assert attribute(dom, "gallery", "data-matches") == str(sum(1 for n in range(3000) if n % 7 == 3))


# ----------------------------------------------------------------------------------------------------------
# Pieces


def test_script_json_cannot_break_out():
    text = script_json({"label": "</script><script>alert(1)</script><!-- \u2028 & >"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text)["label"].startswith("</script>")


def test_relative_urls_are_encoded(tmp_path):
    target = tmp_path / "a" / "javascript:alert(1) #x?y%.png"
    assert relative_url(target, tmp_path / "b") == "../a/javascript%3Aalert%281%29%20%23x%3Fy%25.png"


def test_parse_boxes_is_tolerant():
    assert parse_boxes("[[1, 2, 3, 4], [5, 6, 7, 8]]") == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_boxes("1 2 3 4; 10 20 30.4 40") == [[1, 2, 3, 4], [10, 20, 30, 40]]
    assert parse_boxes("") == [] and parse_boxes("1 2 3") == [] and parse_boxes("5 5 1 1") == []


def test_extra_box_column_is_drawn(tmp_path):
    write_csv(
        tmp_path / "results.csv",
        [result_row("x.png", boxes="[[1,2,10,12],[20,21,30,31]]")],
        [*RESULT_COLUMNS, "boxes"],
    )
    data = embedded_data(write_report(tmp_path, tmp_path / "r.html", quiet=True).read_text())
    assert data["items"][0]["c"][0]["b"] == [[1, 2, 10, 12], [20, 21, 30, 31]]
    assert data["items"][0]["src"] == ""  # x.png does not exist: shown as missing


def test_evaluation_rows_accept_flat_and_nested():
    rows = evaluation_rows(
        {
            "top1_error": 0.4123456,
            "n": 50,
            "localisation_error": {"top1": 0.5, "top5": 0.25},
            "x": [1],
            "ok": True,
            "saliency": {"pointing_game": 0.8333, "average_drop_percent": 69.38, "deletion_auc": 0.0294},
            "per_image": {"a": {"cls": 1}},
        },
        "e.json",
    )
    # the units of `camcaffe evaluate`'s table: errors and the pointing game in percent
    assert [r[:2] for r in rows] == [
        ["top1_error", "0.4123"],
        ["n", "50"],
        ["localisation_error › top1", "50.00 %"],
        ["localisation_error › top5", "25.00 %"],
        ["ok", "yes"],
        ["saliency › pointing_game", "83.33 %"],
        ["saliency › average_drop_percent", "69.38 %"],
        ["saliency › deletion_auc", "0.0294"],
    ]
    with pytest.raises(CamcaffeError, match="expected a JSON object"):
        evaluation_rows([1, 2], "e.json")


def test_evaluation_next_to_results_is_found_and_a_broken_one_skipped(tmp_path, capsys):
    write_csv(tmp_path / "results.csv", [result_row("x.png")])
    (tmp_path / "evaluation.json").write_text('{"accuracy": {"top1": 0.75}}')
    data = embedded_data(write_report(tmp_path, tmp_path / "r.html").read_text())
    assert data["evaluation"][0][:2] == ["accuracy › top1", "0.75"]
    (tmp_path / "evaluation.json").write_text("[")
    data = embedded_data(write_report(tmp_path, tmp_path / "r.html").read_text())
    assert data["evaluation"] == [] and "skipping the evaluation figures" in capsys.readouterr().err


def test_embed_thumbnails_and_cap(cam_run, tmp_path):
    html_path = write_report(cam_run, tmp_path / "embedded.html", embed=True, quiet=True)
    data = embedded_data(html_path.read_text())
    assert all(item["src"].startswith("data:image/jpeg;base64,") for item in data["items"])
    assert all(item["c"][0]["o"].startswith("data:image/jpeg;base64,") for item in data["items"])
    assert data["items"][0]["w"] == 90
    with pytest.raises(CamcaffeError, match="MB cap; link the images instead"):
        write_report(cam_run, tmp_path / "capped.html", embed=True, max_embed_mb=0.001, quiet=True)
    assert not (tmp_path / "capped.html").exists()


def test_relative_paths_resolve_from_the_folder_cam_ran_in(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "out").mkdir()
    ok, png = cv2.imencode(".png", np.zeros((5, 7, 3), np.uint8))
    (tmp_path / "imgs" / "a.png").write_bytes(png.tobytes())
    (tmp_path / "out" / "a_cam.png").write_bytes(png.tobytes())
    cv2.imwrite(str(tmp_path / "imgs" / "b.ppm"), np.zeros((4, 6, 3), np.uint8))
    write_csv(
        tmp_path / "out" / "results.csv",
        [
            result_row("imgs/a.png", overlay="out/a_cam.png"),
            result_row("imgs/b.ppm", overlay="out/b_cam.png"),
        ],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where `cam` ran: the run folder is inferred from the overlay paths
    data = embedded_data(
        write_report(tmp_path / "out", tmp_path / "out" / "report.html", quiet=True).read_text()
    )
    first, second = data["items"]
    assert (first["src"], first["w"], first["h"], first["c"][0]["o"]) == ("../imgs/a.png", 7, 5, "a_cam.png")
    assert second["src"].startswith("data:image/jpeg;base64,") and (second["w"], second["h"]) == (6, 4)
    assert second["c"][0]["o"] == "" and second["c"][0]["on"] == "out/b_cam.png"  # missing overlay


def test_run_panel_shows_how_the_run_was_made(tmp_path):
    from camcaffe.output.report import build_report

    (tmp_path / "results.csv").write_text(
        "image,rank,class_index,label,probability,x0,y0,x1,y1,overlay,error,boxes\n"
        "a.png,1,3,cat,0.9,0,0,4,4,,,\n"
    )
    (tmp_path / "cam_settings.json").write_text(
        json.dumps(
            {
                "model": "models/sq.onnx",
                "method": "gradcam",
                "feature_layer": "conv5",
                "fc_layer": None,
                "resize": "tencrop",
                "crops": 10,
                "boxes": "threshold",
                "box_threshold": 0.2,
                "preprocess": {"mean": [104, 117, 123], "raw_scale": 255, "channel_swap": [2, 1, 0]},
            }
        )
    )
    html_text, _ = build_report(tmp_path / "results.csv", tmp_path / "report.html")
    data = json.loads(re.search(r'id="camcaffe-data">(.*?)</script>', html_text, re.S)[1])
    run = {name: shown for name, shown, _ in data["run"]}
    assert run["model"] == "models/sq.onnx" and run["method"] == "gradcam"
    assert run["feature layer"] == "conv5" and run["classifier layer"] == "detected"
    assert run["views"] == "10 crops of a 256 resize" and run["box generator"].startswith("threshold (0.2")
    assert run["mean"] == "104,117,123" and run["channel swap"] == "2,1,0" and run["input scale"] == "—"
