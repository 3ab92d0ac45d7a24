"""The `web` job: check that the model is an image classifier with a CAM head, add its in-graph CAM outputs
(top-K classes, probabilities and raw maps, plus the `cam_class` input for any other class), settle the
preprocessing exactly as `camcaffe cam` does (metadata, --preset, flags) and write the static site
(`output.web`) whose page reproduces it in the browser."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from camcaffe.errors import CamcaffeError, LabelsError

MAX_MODEL_BYTES = 1_900_000_000  # one protobuf message, and more than a browser tab will load anyway
VIEW_MODES = ("warp", "crop", "torchvision")
PAGE_FILTERS = (
    "caffe",
    "pil-nearest",
    "pil-box",
    "pil-bilinear",
    "pil-hamming",
    "pil-bicubic",
    "pil-lanczos",
)
"""The --resize-filter values app.js reproduces (caffe.io's float resize; Pillow's filters on 8-bit pixels)."""


@dataclass
class WebOptions:
    """What `camcaffe web` was asked, with the command line's defaults."""

    model: Path
    out: Path
    labels: Path | None = None
    top_k: int | None = None  # default: 5, or every class of a smaller classifier
    alpha: float = 0.5
    box_threshold: float = 0.2
    resize: str | None = None  # None: the model's metadata, else warp (as camcaffe cam)
    resize_filter: str | None = None  # None: the model's metadata, else the view's own
    crop_base: int = 256
    preset: str | None = None
    mean: list[float] | None = None
    mean_file: Path | None = None
    raw_scale: float | None = None
    channel_swap: list[int] | None = None
    input_scale: float | None = None
    std: list[float] | None = None
    input_size: list[int] | None = None
    layout: str | None = None
    ort_web: Path | None = None
    fetch: bool = False
    webgpu: bool = True
    title: str | None = None
    quiet: bool = False


def _check_options(options: WebOptions) -> None:
    if options.top_k is not None and options.top_k < 1:
        raise CamcaffeError(f"--top-k must be a positive integer, got {options.top_k}")
    if not 0.0 <= options.alpha <= 1.0:
        raise CamcaffeError(f"--alpha must lie in [0, 1], got {options.alpha}")
    if not 0.0 <= options.box_threshold <= 1.0:
        raise CamcaffeError(f"--box-threshold must lie in [0, 1], got {options.box_threshold}")
    if options.input_size is not None and (len(options.input_size) != 2 or min(options.input_size) <= 0):
        raise CamcaffeError(f"--input-size must be two positive integers H,W, got {options.input_size}")


def _input_geometry(session, options: WebOptions, resize: str) -> tuple[str, str, list[int]]:
    """(input name, layout, [N, C, H, W]) as the page feeds it; refusals as `camcaffe cam` words them."""
    from camcaffe.engines.pipeline import input_layout, nchw_dims

    name = session.input_names[0]
    declared = session.input_dims(name)
    layout = input_layout(declared, options.layout)
    dims = nchw_dims(declared, layout)
    if len(dims) != 4:
        raise CamcaffeError(
            f"{session.source}: input '{name}' has {len(dims)} dims; the page feeds images as N,C,H,W"
        )
    if dims[1] != 3:
        raise CamcaffeError(
            f"{session.source}: input '{name}' takes {dims[1] or 'a variable number of'} channels; the page feeds "
            "3-channel colour images"
        )
    size = options.input_size
    if size is not None:
        if any(d is not None and d != s for d, s in zip(dims[2:], size, strict=True)):
            raise CamcaffeError(
                f"{session.source}: input '{name}' is fixed at {dims[2]}x{dims[3]}; --input-size "
                f"{size[0]},{size[1]} does not fit it (drop --input-size)"
            )
        height, width = size
    elif dims[2] is None or dims[3] is None:
        height, width = _variable_size(session, name, dims, resize)
    else:
        height, width = dims[2], dims[3]
    return name, layout, [dims[0] or 1, 3, int(height), int(width)]


def _variable_size(session, name: str, dims: list, resize: str) -> tuple[int, int]:
    """The size a page feeds a model of variable height/width at, as `camcaffe cam` would settle it (the
    metadata's input_size, else torchvision's 224 crop); the page itself runs one fixed size."""
    from camcaffe.engines.pipeline import TORCHVISION_CROP, metadata_input_size

    stored = metadata_input_size(session)
    if stored is not None and all(d is None or d == s for d, s in zip(dims[2:], stored, strict=True)):
        return stored
    if dims[2] is None and dims[3] is None and resize == "torchvision":
        return TORCHVISION_CROP
    raise CamcaffeError(
        f"{session.source}: input '{name}' has a variable height/width; the page feeds one size: give it with "
        "--input-size H,W (e.g. --input-size 224,224) or record it with camcaffe meta --input-size"
    )


def _check_page_reproduces(views) -> None:
    """The page reproduces every view and filter `camcaffe cam` offers here; one it did not learn is refused."""
    if views.name not in VIEW_MODES:
        raise CamcaffeError(
            f"{views.flag}: the page reproduces --resize {', '.join(VIEW_MODES)} only; give one of those"
        )
    if views.resize_filter not in PAGE_FILTERS:
        raise CamcaffeError(
            f"--resize-filter {views.resize_filter}: the page reproduces {', '.join(PAGE_FILTERS)} only; give one "
            "of those (--resize-filter overrides the model's metadata)"
        )


def _preprocessing(settled, views, name: str, shape: list[int]) -> tuple[dict, np.ndarray | None]:
    """(page settings, mean image or None) of the settled preprocessing, through the same Transformer checks
    as `camcaffe cam`."""
    from camcaffe.engines.pipeline import transformer_for_settings

    transformer = transformer_for_settings(name, (1, *shape[1:]), settled.preprocess)
    mean = transformer.mean.get(name)
    mean_image = None
    mean_vector = None
    if mean is not None and mean.shape[1:] == (1, 1):
        mean_vector = [float(v) for v in np.asarray(mean, np.float32).reshape(-1)]
    elif mean is not None:
        mean_image = np.asarray(mean, np.float32)
    page = {
        "resize": views.name,
        "resize_filter": views.resize_filter,
        "crop_base": views.crop_base,
        "channel_swap": list(transformer.channel_swap.get(name, (0, 1, 2))),
        "raw_scale": transformer.raw_scale.get(name),
        "mean": mean_vector,
        "std": [float(v) for v in transformer.std[name].reshape(-1)] if name in transformer.std else None,
        "input_scale": transformer.input_scale.get(name),
        "assumed": settled.assumed,
    }
    return page, mean_image


def _labels(session, options: WebOptions, num_classes: int) -> list[str]:
    from camcaffe.runtime.labels import load_labels

    if options.labels is not None:
        labels = list(load_labels(options.labels))
        where = f"label file {options.labels}"
    else:
        labels = session.info.labels
        where = "the model's embedded labels"
    if labels is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise LabelsError(
            f"{where} has {len(labels)} labels but the classifier has {num_classes} classes; give a matching "
            "--labels file"
        )
    return [str(label) for label in labels]


def _web_model(session, head, top_k: int):
    """(model bytes, CamOutputs): the model with its CAM outputs and a required `cam_class` input (the
    default value export-cam stores as an initializer is dropped: onnxruntime-web takes no feed for it)."""
    from camcaffe.explain.cam_export import CLASS_INPUT, METADATA_KEY, add_cam_outputs, record_of

    if session.info.metadata.get(METADATA_KEY):
        graph = session.lite.graph
        record = record_of(session.info.metadata, set(session.output_names), {v.name for v in graph.input})
        if record is None or record.class_input is None:
            raise CamcaffeError(
                f"{session.source}: has in-graph CAM outputs without the cam_class input; give the plain model "
                "(camcaffe web adds its own) or one exported with --cam-class"
            )
        if top_k > record.top_k:
            raise CamcaffeError(
                f"{session.source}: maps the top {record.top_k} classes in its graph; give --top-k {record.top_k} "
                "or less, or the plain model"
            )
        model = session.model
    else:
        model = add_cam_outputs(
            session.model, head, top_k, class_input=True, resize=False, source=str(session.source)
        )
        graph = model.graph
        record = record_of(
            {METADATA_KEY: next(p.value for p in model.metadata_props if p.key == METADATA_KEY)},
            {o.name for o in graph.output},
            {i.name for i in graph.input},
        )
    import onnx

    from camcaffe.output.web_vendor import MAX_IR_VERSION, PACKAGE, VERSION

    if model.ir_version > MAX_IR_VERSION:
        raise CamcaffeError(
            f"{session.source}: ONNX IR version {model.ir_version}, but {PACKAGE} {VERSION} reads IR {MAX_IR_VERSION} at "
            "most; save the model with an older IR version (onnx: model.ir_version = 13 when its opsets allow)"
        )
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [t for t in copy.graph.initializer if t.name != CLASS_INPUT]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    size = copy.ByteSize()
    if size > MAX_MODEL_BYTES:
        raise CamcaffeError(
            f"{session.source}: {size / 1e9:.1f} GB with its weights is too large for a page (browsers load a few "
            "hundred MB at most); explain this model with camcaffe cam"
        )
    return copy.SerializeToString(), record


def build_site(options: WebOptions) -> Path:
    """Check everything, then write the site; returns its folder."""
    from camcaffe import __version__
    from camcaffe.engines.cam_run import apply_preset, settle_preprocessing, unscaled_mean_warning
    from camcaffe.engines.pipeline import _check_is_classifier
    from camcaffe.explain.cam_export import head_of
    from camcaffe.explain.views import make_views
    from camcaffe.output import web_vendor
    from camcaffe.output.web import SiteSpec, jet_colormap, write_site
    from camcaffe.runtime.preprocess import max_image_pixels
    from camcaffe.runtime.session import ModelSession

    options = apply_preset(options)  # --preset fills the flags not given, exactly as for camcaffe cam
    _check_options(options)
    vendor_dir = Path(options.ort_web) if options.ort_web is not None else web_vendor.default_dir()
    session = ModelSession(options.model, provider="cpu")
    _check_is_classifier(session)
    head = head_of(session)
    if options.top_k is None:
        options = replace(options, top_k=min(5, head.num_classes))
    if options.top_k > head.num_classes:
        raise CamcaffeError(f"--top-k {options.top_k} must lie between 1 and {head.num_classes}")
    settled = settle_preprocessing(options, session)  # the very settlement of camcaffe cam
    name, layout, shape = _input_geometry(session, options, settled.resize)
    # the view refuses what camcaffe cam refuses (an input over 256 for --resize crop, caffe for torchvision)
    views = make_views(settled.resize, shape[2:], options.crop_base, settled.resize_filter)
    _check_page_reproduces(views)
    page_preprocess, mean_image = _preprocessing(settled, views, name, shape)
    assumed = settled.assumed
    labels = _labels(session, options, head.num_classes)
    if options.fetch and web_vendor.missing_files(vendor_dir, options.webgpu):
        web_vendor.fetch(vendor_dir, log=lambda text: None if options.quiet else print(text, file=sys.stderr))
    web_vendor.check_vendor_dir(vendor_dir, options.webgpu)
    model_bytes, record = _web_model(session, head, options.top_k)
    config = {
        "camcaffe": __version__,
        "title": options.title or Path(options.model).name,
        "input": {"name": name, "layout": layout, "shape": shape},
        "preprocess": page_preprocess,
        "outputs": {
            "top_classes": record.top_classes,
            "top_probabilities": record.top_probabilities,
            "maps": record.maps,
            "class_input": record.class_input,
            "class_probabilities": record.class_probabilities,
            "class_maps": record.class_maps,
        },
        "top_k": options.top_k,
        "num_classes": head.num_classes,
        "labels": labels,
        "box_threshold": options.box_threshold,
        "alpha": options.alpha,
        "max_pixels": max_image_pixels(),
        "colormap": jet_colormap(),
    }
    spec = SiteSpec(model_bytes, config, vendor_dir, mean_image=mean_image, webgpu=options.webgpu)
    out = write_site(options.out, spec)
    if not options.quiet:
        if assumed:
            print(
                f"{options.model}: no preprocessing recorded; the page assumes the ImageNet Caffe defaults (BGR, "
                "0-255, mean 104,117,123), as camcaffe cam does",
                file=sys.stderr,
            )
        unscaled = unscaled_mean_warning(settled.preprocess)
        if unscaled:
            print(f"camcaffe: warning: {unscaled}", file=sys.stderr)
        print(
            f"wrote {out}/ ({len(model_bytes) / 1e6:.1f} MB model, {web_vendor.PACKAGE} {web_vendor.VERSION}); "
            f"serve it over HTTP, e.g. python3 -m http.server -d {out} 8000, and open http://localhost:8000/",
            file=sys.stderr,
        )
    return out
