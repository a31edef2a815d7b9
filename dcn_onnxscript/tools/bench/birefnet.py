"""BiRefNet (github ZhengPeng7/BiRefNet) with the swin_v1_t backbone and random weights, built from a
checkout of its repository (``--birefnet PATH``; nothing is downloaded): its decoder's ASPPDeformable
blocks hold 20 ``DeformableConv2d`` layers that call ``torchvision.ops.deform_conv2d``.

Its tutorial (``tutorials/BiRefNet_pth2onnx.ipynb``) picks the backbone by editing ``config.py``; the bench
leaves the checkout as it is and makes ``Config.bb`` read ``swin_v1_t`` instead, so that every setting
derived from the backbone follows it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
import warnings
from typing import Optional

import torch

from dcn_onnxscript.tools.bench.catalog import Unavailable

#: The backbone: the tutorial's choice where memory is short (a 44 M-parameter model).
BACKBONE = "swin_v1_t"
#: Std of the offset and modulator predictors' weights. BiRefNet starts them at zero, which would leave
#: the sampling undeformed (every tap on the grid); random weights of this size move taps by pixels.
PREDICTOR_STD = 0.01
#: What BiRefNet's modules import beyond torch and torchvision.
REQUIREMENTS = ("einops", "kornia", "timm", "huggingface_hub", "cv2", "tqdm")
#: The tutorial's export: opset and the names of the input and of the first output.
TUTORIAL_OPSET = 17
TUTORIAL_NAMES = (["input_image"], ["output_image"])
#: Its top-level modules, imported from the checkout.
_MODULES = ("config", "models.birefnet")


def build(checkout: Optional[pathlib.Path], seed: int) -> torch.nn.Module:
    """BiRefNet from the checkout at ``checkout``, random weights from ``seed``, in eval mode;
    :class:`Unavailable` naming what is missing."""
    if checkout is None:
        raise Unavailable("skipped: no BiRefNet checkout (--birefnet PATH or DCN_BENCH_BIREFNET; "
                          "github ZhengPeng7/BiRefNet)")
    if not (checkout / "models" / "birefnet.py").exists():
        raise Unavailable(f"skipped: {checkout} holds no models/birefnet.py (not a BiRefNet checkout)")
    missing = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        raise Unavailable(f"skipped: BiRefNet needs {', '.join(missing)} (pip install einops kornia timm "
                          "huggingface_hub opencv-python-headless tqdm)")
    config, model = _import(checkout)
    torch.manual_seed(seed)
    network = model.BiRefNet(bb_pretrained=False).eval()
    if network.config.bb != BACKBONE:
        raise Unavailable(f"skipped: BiRefNet's config did not take backbone {BACKBONE} ({network.config.bb})")
    for module in network.modules():
        if type(module).__name__ == "DeformableConv2d":
            for predictor in (module.offset_conv, module.modulator_conv):
                torch.nn.init.normal_(predictor.weight, std=PREDICTOR_STD)
    return network


def _import(checkout: pathlib.Path):
    """BiRefNet's ``config`` and ``models.birefnet`` modules, with the backbone set before any
    ``Config()`` exists (``models.birefnet`` makes some at import)."""
    sys.path.insert(0, str(checkout))
    try:
        config = importlib.import_module(_MODULES[0])
        config.Config.bb = property(lambda self: BACKBONE, lambda self, value: None)
        return config, importlib.import_module(_MODULES[1])
    finally:
        sys.path.remove(str(checkout))


def tutorial_export(module: torch.nn.Module, image: torch.Tensor, file: pathlib.Path) -> None:
    """``module`` run on ``image`` (1, 3, H, W) written to ``file`` as BiRefNet's tutorial writes it:
    deform_conv2d_onnx_exporter 1.2.0 (GatherND) with the tutorial's patch, TorchScript, opset 17, static
    shapes; its last output is the prediction."""
    from dcn_onnxscript.tools.bench import exports, peers  # exports imports cases, which imports this module

    dcoe = peers.import_dcoe()
    symbolic = dcoe.deform_conv2d_func(True, False)
    with warnings.catch_warnings(), peers.tutorial_patch(dcoe), exports._only_symbolic(symbolic, TUTORIAL_OPSET):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (image,), str(file), dynamo=False, opset_version=TUTORIAL_OPSET,
                          input_names=TUTORIAL_NAMES[0], output_names=TUTORIAL_NAMES[1])
