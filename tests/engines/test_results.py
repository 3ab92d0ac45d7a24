"""results.csv as written without pandas: the columns, quoting, integers and empty cells pandas would give."""

from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd

from camcaffe.engines.pipeline import RESULT_COLUMNS
from camcaffe.engines.results import write_results


def test_cells_round_trip_through_pandas_and_csv(tmp_path):
    rows = [
        {
            "image": "a b/it's, \"odd\".jpg",
            "rank": np.int64(1),
            "class_index": 281,
            "label": 'tabby, tabby cat "x"',
            "probability": np.float32(0.25),
            "x0": 0, "y0": np.int32(3), "x1": 9.0, "y1": 12,
            "overlay": "o/a_cam.png",
            "error": "",
            "boxes": "0 3 9 12;1 1 2 2",
        },
        {"image": "bad.png", "rank": "", "class_index": float("nan"), "error": "cannot read; check it"},
    ]  # fmt: skip
    write_results(tmp_path, rows, as_json=False)
    text = (tmp_path / "results.csv").read_text()
    assert text.splitlines()[0] == ",".join(RESULT_COLUMNS) and "\r" not in text
    parsed = list(csv.DictReader(text.splitlines()))
    assert parsed[0]["image"] == rows[0]["image"] and parsed[0]["label"] == rows[0]["label"]
    assert (parsed[0]["rank"], parsed[0]["class_index"], parsed[0]["x1"], parsed[0]["y0"]) == ("1", "281", "9", "3")
    assert float(parsed[0]["probability"]) == float(np.float32(0.25))
    assert parsed[1]["class_index"] == "" and parsed[1]["label"] == "" and parsed[1]["error"].startswith("cannot")
    frame = pd.read_csv(tmp_path / "results.csv", keep_default_na=False)
    assert list(frame.columns) == RESULT_COLUMNS and len(frame) == 2
    assert math.isclose(float(frame.loc[0, "probability"]), 0.25)
