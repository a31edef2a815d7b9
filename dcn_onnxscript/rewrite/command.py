"""What ``python -m dcn_onnxscript rewrite`` does (its arguments are in :mod:`dcn_onnxscript.rewrite.cli`):
load, rewrite, optionally check against the original on onnxruntime, write (external data where needed)."""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
from typing import Iterator, Optional, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime

from dcn_onnxscript.rewrite import targets
from dcn_onnxscript.rewrite.rewriter import (
    Progress,
    RewriteError,
    _all_nodes,
    _onnx_opset,
    one_line,
    rewrite,
)

#: From this many nodes (all graphs and functions together), the command line reports progress on stderr.
LARGE_MODEL_NODES = 5000


def run(args: argparse.Namespace) -> int:
    try:
        output = _output_path(args)
        model = _load(args.input)
        progress = _print_progress if _count_nodes(model) >= LARGE_MODEL_NODES else None
        external = _needs_external_data(model)  # before an opset conversion loads the data into memory
        result = rewrite(model, impl=args.impl, opset=args.opset, progress=progress)
        retargeted = targets.for_target(result.model, args.target) if args.target else 0
        with _staged(output, result.model, external, progress) as staged:
            if args.check:
                if progress:
                    progress("checking")
                for line in _check(args.input, staged, args.tolerance, args.seed):
                    print(line)
    except (ValueError, OSError) as error:  # RewriteError is a ValueError
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(note)
    for_target = f"{retargeted} pattern(s) written for {args.target}" if args.target else None
    if not result.counts:
        print(f"nothing to rewrite: {args.input} holds no DeformConv, mmcv deformable convolution or "
              "deform_conv2d_onnx_exporter layer that could be proven; "
              f"{for_target or 'wrote an unchanged copy'} (opset {_onnx_opset(result.model)}) -> {output}")
        return 0
    written = ", ".join(sorted(result.lowerings)) or args.impl
    also = f"; {for_target}" if for_target else ""
    print(f"{result.summary()} (impl {written}, opset {_onnx_opset(result.model)}){also} -> {output}")
    return 0


def _output_path(args: argparse.Namespace) -> pathlib.Path:
    """Where to write: OUT, or the input itself with --in-place; never the input otherwise."""
    if args.in_place:
        if args.output is not None and not _same_file(args.output, args.input):
            raise RewriteError("--in-place overwrites the input; leave OUT out")
        return args.input
    if args.output is None:
        raise RewriteError("give OUT.onnx, or --in-place to overwrite the input")
    if _same_file(args.output, args.input):
        raise RewriteError(f"{args.output} is the input; pass --in-place to overwrite it")
    return args.output


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _load(path: pathlib.Path) -> ir.Model:
    """The model at ``path``, external data left on disk until needed."""
    try:
        model = ir.load(path)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise RewriteError(f"{path}: not an ONNX model ({one_line(error)})") from None
    if not model.ir_version or not model.opset_imports:
        raise RewriteError(f"{path}: not an ONNX model (no IR version or opset)")
    return model


def _count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in _all_nodes(model))


def _print_progress(message: str) -> None:
    print(f"rewrite: {message}", file=sys.stderr, flush=True)


def _needs_external_data(model: ir.Model) -> bool:
    """Whether to write the tensors to a data file: the input did, or they would not fit a protobuf file."""
    tensors = [value.const_value for graph in model.graphs() for value in graph.initializers.values()
               if value.const_value is not None]
    return any(isinstance(t, ir.ExternalTensor) for t in tensors) or sum(t.nbytes for t in tensors) > _PROTOBUF_LIMIT


#: Tensors above this many bytes in all go to external data (a protobuf file cannot exceed 2 GiB).
_PROTOBUF_LIMIT = 2**31 - 2**26


@contextlib.contextmanager
def _staged(output: pathlib.Path, model: ir.Model, external_data: bool,
            progress: Optional[Progress]) -> Iterator[pathlib.Path]:
    """Write ``model`` (with its tensors in ``OUT.data`` when ``external_data``) into a temporary folder
    beside ``output``, yield the staged path, and move it into place only if the body succeeds."""
    output = output.absolute()
    if not output.parent.is_dir():
        raise RewriteError(f"{output.parent}: no such folder (for the output {output})")
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as folder:
        staged = pathlib.Path(folder) / output.name
        data = f"{output.name}.data" if external_data else None
        if progress:
            progress(f"writing {output}" + (f" and {data}" if data else ""))
        ir.save(model, staged, external_data=data)
        yield staged
        if data:
            os.replace(staged.parent / data, output.parent / data)
        os.replace(staged, output)


def _check(original: pathlib.Path, rewritten: pathlib.Path, tolerance: float, seed: int) -> list[str]:
    """Run onnx.checker (full check) on ``rewritten`` and compare both models on onnxruntime with random
    inputs; raise :class:`RewriteError` on a failure. Returns the report, one line per check."""
    try:
        onnx.checker.check_model(str(rewritten), full_check=True)
    except Exception as error:  # noqa: BLE001  (checker and shape inference raise different types)
        raise RewriteError(f"onnx.checker: {one_line(error)}") from None
    report = ["check: onnx.checker (full_check) passed"]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        before = onnxruntime.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001
        return report + [f"check: the original does not run on onnxruntime ({one_line(error)[:200]}); "
                         "outputs not compared"]
    after = onnxruntime.InferenceSession(str(rewritten), options, providers=["CPUExecutionProvider"])
    feeds = _random_feeds(before.get_inputs(), np.random.default_rng(seed))
    try:
        expected = before.run(None, feeds)
    except Exception as error:  # noqa: BLE001
        return report + [f"check: the original fails on random inputs ({one_line(error)[:200]}); "
                         "outputs not compared"]
    actual = after.run(None, feeds)
    shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in feeds.items())
    unlike = sum(_non_finite_mismatches(a, e) for a, e in zip(actual, expected))
    if unlike:
        raise RewriteError(f"onnxruntime, original vs rewritten on random inputs ({shapes}): {unlike} output "
                           "value(s) are NaN or infinite in one model and not the same in the other: outputs differ")
    worst = max((_relative_error(a, e) for a, e in zip(actual, expected)), default=0.0)
    line = (f"check: onnxruntime, original vs rewritten on random inputs ({shapes}): max |difference| "
            f"{worst:.3g} relative to max(1, max |original|), tolerance {tolerance:g}")
    if not worst <= tolerance:
        raise RewriteError(line.removeprefix("check: ") + ": outputs differ")
    return report + [line]


#: onnxruntime's type string -> numpy dtype, for the random inputs of --check.
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _random_feeds(inputs: Sequence, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs: standard-normal floats, zeros otherwise; a named dynamic dimension is 1 on axis 0 and
    16 elsewhere, the same wherever its name recurs."""
    sizes: dict[str, int] = {}
    feeds = {}
    for value in inputs:
        if value.type not in _ORT_TYPES:
            raise RewriteError(f"--check cannot make random values for input {value.name!r} of {value.type}")
        shape = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                shape.append(dim)
            else:
                shape.append(sizes.setdefault(dim, 1 if axis == 0 else 16) if dim else (1 if axis == 0 else 16))
        dtype = _ORT_TYPES[value.type]
        floating = np.issubdtype(dtype, np.floating)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype) if floating else np.zeros(shape, dtype)
    return feeds


def _non_finite_mismatches(actual: np.ndarray, expected: np.ndarray) -> int:
    """How many positions of two outputs of one shape are NaN or ±Inf in one and not the same in the other
    (a NaN where the original is finite is a difference, not a value to skip); 0 for other shapes (compared
    by :func:`_relative_error`)."""
    if actual.shape != expected.shape or not np.issubdtype(expected.dtype, np.floating):
        return 0
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    same = (np.isnan(actual) & np.isnan(expected)) | (np.isinf(expected) & (actual == expected))
    return int(np.count_nonzero(~(np.isfinite(actual) & np.isfinite(expected)) & ~same))


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| over the positions where the original is finite, relative to max(1, max
    |expected|) there (non-finite positions are :func:`_non_finite_mismatches`'s); inf for other shapes."""
    if actual.shape != expected.shape:
        return float("inf")
    finite = np.isfinite(expected.astype(np.float64)) if np.issubdtype(expected.dtype, np.floating) else \
        np.ones(expected.shape, dtype=bool)
    if not finite.any():
        return 0.0
    actual, expected = actual.astype(np.float64)[finite], expected.astype(np.float64)[finite]
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(actual - expected).max()) / scale
