"""Label files in every format Caffe projects ship, and the errors for broken ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from camcaffe.errors import CamcaffeError, InputFileError, LabelsError
from camcaffe.runtime.labels import Labels, check_label_count, label_names, load_labels, resolve_class

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
CAM14_LABELS = SHARED / "golden" / "googlenet_cam14" / "class_labels.csv"
SYNSET_WORDS = SHARED / "data" / "labels" / "synset_words.txt"
SIMPLE_JSON = SHARED / "data" / "labels" / "imagenet-simple-labels.json"
DEMO_WORDS = Path(__file__).resolve().parents[2] / "examples" / "demo" / "synset_words.txt"


def _need(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} not available")


def _file(tmp_path: Path, text: str | bytes, name: str = "labels.txt") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_space_separated_golden_file_matches_pandas() -> None:
    _need(CAM14_LABELS)
    labels = load_labels(CAM14_LABELS)
    legacy = pd.read_csv(CAM14_LABELS, sep=" ", header=None)  # how the legacy scripts read it
    assert labels == list(legacy[1])
    assert len(labels) == 14 and labels[0] == "bicycling" and labels[13] == "water_activities"


def test_synset_words() -> None:
    _need(SYNSET_WORDS)
    labels = load_labels(SYNSET_WORDS)
    assert len(labels) == 1000
    assert labels[0] == "tench, Tinca tinca"
    assert labels[968].startswith("cup")


def test_json_list() -> None:
    _need(SIMPLE_JSON)
    labels = load_labels(SIMPLE_JSON)
    assert len(labels) == 1000
    assert labels.index("cup") == 968 and labels[0] == "tench"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("index,label\n0,cat\n1,dog\n2,hot dog\n", ["cat", "dog", "hot dog"]),
        ("label,index\ncat,1\ndog,0\n", ["dog", "cat"]),
        ("0,cat\n1,dog\n", ["cat", "dog"]),
        ('0,"great white shark, man-eater"\n1,tench\n', ["great white shark, man-eater", "tench"]),
        ("label\ncat\ndog\n", ["cat", "dog"]),
        ("cat\ndog\ngreat white shark\n\n", ["cat", "dog", "great white shark"]),
        ("2 hot dog\n0 cat\n1 dog\n", ["cat", "dog", "hot dog"]),
        ("0\tcat\n1\tdog\n", ["cat", "dog"]),
        ("\ufeffn01440764 tench, Tinca tinca\r\nn01443537 goldfish\r\n", ["tench, Tinca tinca", "goldfish"]),
        ('["a", "b c"]', ["a", "b c"]),
        (
            "tench, Tinca tinca\ngoldfish, Carassius auratus\n",
            ["tench, Tinca tinca", "goldfish, Carassius auratus"],
        ),
    ],
)
def test_formats(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert load_labels(_file(tmp_path, text)) == expected


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("0 cat\n1 dog\n1 bird\n", r"labels.txt: index 1 appears twice \(lines 2 and 3\)"),
        ("0 cat\n2 dog\n", r"labels.txt: index 1 is missing"),
        ("0,cat\n2,dog\n3,cow\n", r"index 1 is missing"),
        ("-1 cat\n0 dog\n", r"negative index -1"),
        ("cat\n\ndog\n", r"line 2 is blank"),
        ("", r"labels.txt is empty"),
        ("  \n\n", r"labels.txt is empty"),
        ('{"0": "cat"}', r"JSON list"),
        ('["cat", ', r"not valid JSON"),
        ('["cat", 3]', r"entry 1"),
    ],
)
def test_errors_name_file_and_index(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(LabelsError, match=pattern):
        load_labels(_file(tmp_path, text))


def test_undecodable_bytes(tmp_path: Path) -> None:
    path = _file(tmp_path, "0 caf\xe9\n1 th\xe9\n".encode("latin-1"))
    with pytest.raises(LabelsError, match=r"labels.txt is not UTF-8 text \(byte 0xe9 at offset 5\)"):
        load_labels(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="absent.txt does not exist"):
        load_labels(tmp_path / "absent.txt")
    with pytest.raises(InputFileError, match="is a folder"):
        load_labels(tmp_path)


def test_check_label_count(tmp_path: Path) -> None:
    labels = [f"class{i}" for i in range(13)]
    check_label_count(labels, 13, "labels.txt")
    with pytest.raises(LabelsError, match="labels.txt has 13 labels but the classifier has 14 classes"):
        check_label_count(labels, 14, "labels.txt")
    with pytest.raises(LabelsError) as refused:
        check_label_count(labels, 14, tmp_path / "l.csv")
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "l.csv") in message and "14 classes" in message


WORDS = (
    "n02123045 tabby, tabby cat\nn02124075 Egyptian cat\nn02012849 crane\nn03126707 crane\nn04398044 teapot\n"
)


def test_synset_words_keep_their_ids(tmp_path) -> None:
    labels = load_labels(_file(tmp_path, WORDS))
    assert labels == ["tabby, tabby cat", "Egyptian cat", "crane", "crane", "teapot"]
    assert labels.synsets == ["n02123045", "n02124075", "n02012849", "n03126707", "n04398044"]
    assert load_labels(_file(tmp_path, "cat\ndog\n", "plain.txt")).synsets is None
    assert load_labels(_file(tmp_path, '["cat", "dog"]', "l.json")).synsets is None


def test_labels_survive_pickling_with_their_ids() -> None:
    import pickle

    labels = pickle.loads(pickle.dumps(Labels(["cat", "dog"], ["n00000001", "n00000002"])))
    assert labels == ["cat", "dog"] and labels.synsets == ["n00000001", "n00000002"]


def test_label_names_are_the_line_and_each_synonym() -> None:
    assert label_names("tabby,  Tabby Cat") == ["tabby, tabby cat", "tabby", "tabby cat"]


@pytest.mark.parametrize(
    "given",
    ["tabby", "Tabby Cat", "TABBY", "tabby, tabby cat", " tabby  cat ", "n02123045", "N02123045", "0"],
)
def test_a_class_is_named_by_any_synonym_its_synset_id_or_index(tmp_path, given) -> None:
    labels = load_labels(_file(tmp_path, WORDS))
    assert resolve_class(given, labels, 5, labels.synsets) == 0


def test_a_shared_name_lists_the_candidates(tmp_path) -> None:
    labels = load_labels(_file(tmp_path, WORDS))
    with pytest.raises(CamcaffeError, match=r"'crane' names 2 classes \(2 'crane' \(n02012849\); 3 'crane'"):
        resolve_class("crane", labels, 5, labels.synsets)
    assert resolve_class("n03126707", labels, 5, labels.synsets) == 3


def test_an_unknown_class_suggests_close_matches(tmp_path) -> None:
    labels = load_labels(_file(tmp_path, WORDS))
    with pytest.raises(CamcaffeError, match=r"no such label \(close: 'tabby' = 0, 'tabby cat' = 0") as error:
        resolve_class("tabbby", labels, 5, labels.synsets)
    assert "teapot" not in str(error.value) and "synset id" in str(error.value)
    with pytest.raises(CamcaffeError, match="index out of range 0..4"):
        resolve_class("5", labels, 5)
    with pytest.raises(CamcaffeError, match="no labels"):
        resolve_class("tabby", None, 5)


def test_the_demo_labels_resolve_imagenet_names() -> None:
    labels = load_labels(DEMO_WORDS)
    assert len(labels) == 1000 and labels.synsets[281] == "n02123045"
    assert resolve_class("tabby cat", labels, 1000, labels.synsets) == 281
    assert resolve_class("Kit Fox", labels, 1000, labels.synsets) == 278
