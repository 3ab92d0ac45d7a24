"""Small pure helpers shared by the layer converters."""

from __future__ import annotations

from collections.abc import Sequence

from camcaffe.convert.registry import LayerRefused


def canonical_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise LayerRefused(f"{what} {axis} is out of range for a {rank}-D blob")
    return axis + rank if axis < 0 else axis


def product(values: Sequence[int]) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result


def spatial_values(
    repeated: Sequence[int],
    h_value: int | None,
    w_value: int | None,
    num_spatial: int,
    default: int | None,
    name: str,
) -> list[int]:
    """Resolve Caffe's `x` (repeated, one or per-axis) vs `x_h`/`x_w` spellings to per-axis values."""
    if h_value is not None or w_value is not None:
        if num_spatial != 2:
            raise LayerRefused(f"{name}_h/{name}_w need a 2-D spatial blob")
        if repeated:
            raise LayerRefused(f"give either {name} or {name}_h/{name}_w, not both")
        if (h_value is None or w_value is None) and default is None:
            raise LayerRefused(f"{name}_h and {name}_w must be given together")
        return [default if h_value is None else h_value, default if w_value is None else w_value]
    if not repeated:
        if default is None:
            raise LayerRefused(f"{name} is not set")
        return [default] * num_spatial
    if len(repeated) == 1:
        return [int(repeated[0])] * num_spatial
    if len(repeated) != num_spatial:
        raise LayerRefused(f"{name} has {len(repeated)} values for {num_spatial} spatial axes")
    return [int(v) for v in repeated]
