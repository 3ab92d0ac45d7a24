"""The preprocessing presets and the checks of single settings."""

from __future__ import annotations

import pytest

from camcaffe.errors import CamcaffeError
from camcaffe.runtime.pil_resize import PIL_FILTERS
from camcaffe.runtime.presets import PRESETS, RESIZE_FILTERS, SETTINGS, check_settings, preset


def test_the_filter_names_are_caffe_and_every_pillow_filter():
    assert ("caffe", *(f"pil-{name}" for name in PIL_FILTERS)) == RESIZE_FILTERS


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_names_every_setting_and_passes_its_checks(name):
    values = preset(name)
    assert set(values) == set(SETTINGS)
    assert check_settings(values, channels=3) == values


def test_presets_are_copies():
    preset("torchvision")["mean"][0] = 9.0
    assert PRESETS["torchvision"]["mean"][0] == 0.485


def test_the_keras_and_torchvision_numbers():
    assert preset("keras-vgg")["mean"] == [103.939, 116.779, 123.68] and preset("keras-vgg")[
        "channel_swap"
    ] == [2, 1, 0]
    assert preset("inception") == preset("keras-tf")
    assert preset("keras-tf")["mean"] == preset("keras-tf")["std"] == [127.5] * 3
    assert {preset(n)["resize_filter"] for n in ("keras-vgg", "keras-tf", "keras-torch")} == {"pil-nearest"}
    assert preset("torchvision")["resize_filter"] == "pil-bilinear"


def test_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(
        CamcaffeError, match="--preset keras: unknown; choose one of caffe, torchvision, keras-vgg"
    ):
        preset("keras")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mean": "104"}, "--mean takes comma-separated numbers"),
        ({"mean": [1.0, float("inf"), 2.0]}, "--mean .*must be finite"),
        ({"input_scale": float("nan")}, "--input-scale nan: must be a finite, non-zero number"),
        ({"channel_swap": [0, 1, 3]}, "--channel-swap 0,1,3: must be an order of 0..2"),
        ({"std": [1.0, 1.0]}, "--std has 2 values but the model's input has 3 channels"),
        ({"gamma": 2.2}, "unknown preprocessing setting 'gamma'"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(settings, message):
    with pytest.raises(CamcaffeError, match=message):
        check_settings(settings, channels=3)


def test_without_a_channel_count_any_length_passes():
    assert check_settings({"mean": [1.0], "channel_swap": [1, 0]}) == {"mean": [1.0], "channel_swap": [1, 0]}
