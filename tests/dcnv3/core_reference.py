"""A test-only numpy reference of the DCNv3 and DCNv4 cores, written from their definition (not from the
package's rewrite into deform_conv2d), and generated core cases with their inputs.

Point p of group g at output position (oy, ox) samples, per axis,

    y = oy·stride_h − pad_h + c_h + (ih·dilation_h − c_h + Δy)·offset_scale,   c_h = ⌊dilation_h·(kernel_h − 1) / 2⌋

(and x alike), bilinearly with zeros outside; points run column-major over the kernel (iw outer, ih inner),
the centre (kernel_h // 2, kernel_w // 2) left out with remove_center. A position that is not finite
contributes zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from dcn_onnxscript.lowering.dcnv3 import Core


def bilinear(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """``image`` (H, W, Cg) at (y, x), zero outside: (Cg,) float64."""
    H, W, _ = image.shape
    value = np.zeros(image.shape[2])
    if not (math.isfinite(y) and math.isfinite(x)) or y <= -1 or x <= -1 or y >= H or x >= W:
        return value
    y0, x0 = math.floor(y), math.floor(x)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < H and 0 <= xx < W:
                value += (1 - abs(y - yy)) * (1 - abs(x - xx)) * image[yy, xx]
    return value


def points(core: Core) -> list[tuple[int, int]]:
    """(ih, iw) of every point, in the core's order."""
    kH, kW = core.kernel
    return [(ih, iw) for iw in range(kW) for ih in range(kH)
            if not (core.remove_center and (ih, iw) == (kH // 2, kW // 2))]


def core_reference(core: Core, input: np.ndarray, offset: np.ndarray, mask: Optional[np.ndarray] = None
                   ) -> np.ndarray:
    """The core's output (N, Ho, Wo, G·Cg) in float64 of ``input`` (N, H, W, G·Cg) and DCNv3's ``offset``
    (N, Ho, Wo, G·P·2) and ``mask`` (N, Ho, Wo, G·P), or DCNv4's ``offset`` = offset_mask (N, Ho, Wo, ≥ G·P·3)."""
    input, offset = input.astype(np.float64), offset.astype(np.float64)
    N, _, _, C = input.shape
    _, Ho, Wo, _ = offset.shape
    G, Cg, P = core.group, core.group_channels, core.points
    (sh, sw), (ph, pw), (dh, dw) = core.stride, core.padding, core.dilation
    ch, cw = dh * (core.kernel[0] - 1) // 2, dw * (core.kernel[1] - 1) // 2
    out = np.zeros((N, Ho, Wo, C))
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(N):
            for oy in range(Ho):
                for ox in range(Wo):
                    for g in range(G):
                        image = input[n, :, :, g * Cg:(g + 1) * Cg]
                        for p, (ih, iw) in enumerate(points(core)):
                            if core.version == 3:
                                dx, dy = offset[n, oy, ox, (g * P + p) * 2: (g * P + p) * 2 + 2]
                                m = mask[n, oy, ox, g * P + p]
                            else:
                                base = g * 3 * P
                                dx, dy = offset[n, oy, ox, base + 2 * p: base + 2 * p + 2]
                                m = offset[n, oy, ox, base + 2 * P + p]
                            y = oy * sh - ph + ch + (ih * dh - ch + dy) * core.offset_scale
                            x = ox * sw - pw + cw + (iw * dw - cw + dx) * core.offset_scale
                            out[n, oy, ox, g * Cg:(g + 1) * Cg] += m * bilinear(image, y, x)
    return out


@dataclasses.dataclass(frozen=True)
class CoreCase:
    """A core and the input size it is called at."""

    core: Core
    size: tuple[int, int]
    batch: int = 1

    @property
    def output_size(self) -> tuple[int, int]:
        return self.core.output_size(self.size)

    def offset_channels(self) -> int:
        """DCNv3: G·P·2; DCNv4: G·P·3 padded to a multiple of 8, as DCNv4's module pads it."""
        G, P = self.core.group, self.core.points
        return G * P * 2 if self.core.version == 3 else -(-G * P * 3 // 8) * 8

    def inputs(self, seed: int = 0, dtype=np.float32) -> list[np.ndarray]:
        """input, offset[, mask]: offsets of a few pixels (samples land inside, on the border and outside),
        DCNv3's masks softmax-normalised over each group's points, DCNv4's unnormalised."""
        rng = np.random.default_rng(seed)
        N, (H, W), (Ho, Wo), core = self.batch, self.size, self.output_size, self.core
        x = rng.standard_normal((N, H, W, core.channels))
        offset = rng.standard_normal((N, Ho, Wo, self.offset_channels())) * 1.5
        if core.version == 4:
            return [a.astype(dtype) for a in (x, offset)]
        logits = rng.standard_normal((N, Ho, Wo, core.group, core.points))
        mask = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return [a.astype(dtype) for a in (x, offset, mask.reshape(N, Ho, Wo, -1))]

    def __str__(self) -> str:
        c = self.core
        return (f"v{c.version}-k{c.kernel[0]}x{c.kernel[1]}-s{c.stride[0]}{c.stride[1]}-p{c.padding[0]}{c.padding[1]}"
                f"-d{c.dilation[0]}{c.dilation[1]}-g{c.group}x{c.group_channels}-os{c.offset_scale:g}"
                f"{'-rc' if c.remove_center else ''}-{self.batch}x{self.size[0]}x{self.size[1]}")


def random_case(rng: np.random.Generator, version: int) -> CoreCase:
    """A random valid case: kernels 1–5 per axis (even ones too), strides and dilations 1–2, pads 0–2, 1–3 groups
    of 1–4 channels, offset_scale 1 or not, remove_center where a point is left, sizes from 1 pixel, batch 1–2."""
    while True:
        kernel = tuple(int(k) for k in rng.choice([1, 2, 3, 3, 5], 2))
        core = Core(kernel=kernel, stride=tuple(int(s) for s in rng.integers(1, 3, 2)),
                    padding=tuple(int(p) for p in rng.integers(0, 3, 2)),
                    dilation=tuple(int(d) for d in rng.integers(1, 3, 2)), group=int(rng.integers(1, 4)),
                    group_channels=int(rng.integers(1, 5)), offset_scale=float(rng.choice([1.0, 0.5, 2.0])),
                    remove_center=bool(rng.integers(0, 2)) and kernel[0] * kernel[1] > 1, version=version)
        case = CoreCase(core, size=tuple(int(s) for s in rng.integers(1, 8, 2)), batch=int(rng.integers(1, 3)))
        if min(case.output_size) >= 1:
            return case


def generated_cases(count: int, version: int, seed: int) -> list[CoreCase]:
    """``count`` random cases of core ``version``; the first one is a 1-pixel input."""
    rng = np.random.default_rng(seed)
    one_pixel = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 2, version=version), size=(1, 1))
    return [one_pixel] + [random_case(rng, version) for _ in range(count - 1)]
