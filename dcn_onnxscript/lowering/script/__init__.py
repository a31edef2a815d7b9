"""The standalone form: onnxscript functions (``@script``) for reuse in any ONNX or onnxscript graph,
dynamic in every size and attribute.

:mod:`.grid_sample` holds the public functions (``dcn_onnxscript.deform_conv2d`` and its variants),
:mod:`.gather` the ones that compute in the inputs' own type (float64 too) without ``GridSample``. Both
are built on first use, not on import (so are the DCNv3 and DCNv4 cores of :mod:`.cores`,
``dcnv3`` and ``dcnv4``): parsing the ``@script`` functions and flattening them takes a
good part of a second, which ``import dcn_onnxscript`` and the rewriter's command line should not pay.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dcn_onnxscript.lowering.script.protos import DOMAIN, DOMAIN_VERSION, function_protos

if TYPE_CHECKING:
    from onnxscript import OnnxFunction

    from dcn_onnxscript.lowering.script.cores import dcnv3, dcnv4
    from dcn_onnxscript.lowering.script.grid_sample import (
        deform_conv2d,
        deform_conv2d_no_bias,
        deform_conv2d_no_bias_no_mask,
        deform_conv2d_no_mask,
    )

#: lowering -> the module of its script functions, and (bias, mask) -> the function's name there.
_NAMES = {
    "gather": ("dcn_onnxscript.lowering.script.gather", {
        (True, True): "deform_conv2d_gather", (False, True): "deform_conv2d_gather_no_bias",
        (True, False): "deform_conv2d_gather_no_mask", (False, False): "deform_conv2d_gather_no_bias_no_mask"}),
    "grid_sample": ("dcn_onnxscript.lowering.script.grid_sample", {
        (True, True): "deform_conv2d", (False, True): "deform_conv2d_no_bias",
        (True, False): "deform_conv2d_no_mask", (False, False): "deform_conv2d_no_bias_no_mask"}),
}
#: The public functions: served from this lowering's module.
_PUBLIC = "grid_sample"
#: The public DCNv3 and DCNv4 cores and their module.
_CORES = ("dcn_onnxscript.lowering.script.cores", ("dcnv3", "dcnv4"))


class _Variants(Mapping):
    """(bias, mask) -> the script function of one lowering, its module imported (the functions built) on the
    first lookup of a function."""

    def __init__(self, lowering: str) -> None:
        self._module, self._names = _NAMES[lowering]

    def __getitem__(self, key: tuple[bool, bool]) -> OnnxFunction:
        return getattr(importlib.import_module(self._module), self._names[key])

    def __iter__(self) -> Iterator[tuple[bool, bool]]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def name_of(self, key: tuple[bool, bool]) -> str:
        """The function's name, without building it."""
        return self._names[key]


#: lowering -> (bias, mask) -> its public script function (built on first lookup)
VARIANTS: Mapping[str, Mapping[tuple[bool, bool], OnnxFunction]] = {name: _Variants(name) for name in _NAMES}

__all__ = ["DOMAIN", "DOMAIN_VERSION", "VARIANTS", "dcnv3", "dcnv4", "deform_conv2d", "deform_conv2d_no_bias",
           "deform_conv2d_no_bias_no_mask", "deform_conv2d_no_mask", "function_protos"]


def __getattr__(name: str) -> Any:
    for module, names in (_NAMES[_PUBLIC][0], _NAMES[_PUBLIC][1].values()), _CORES:
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
