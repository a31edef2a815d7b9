"""Progress lines on stderr for the long-running tools (demo, bench, the ResNet-50 example)."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from typing import Iterator


class Progress(io.TextIOBase):
    """``progress("message")`` prints ``[  12.3 s] message`` on stderr, counting from its creation. As a
    text stream (``contextlib.redirect_stdout(progress)``) it prints every complete line written to it,
    indented: that is how torch.onnx's verbose phase lines become progress."""

    def __init__(self) -> None:
        self.start, self.pending = time.perf_counter(), ""

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f} s] {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """``what...`` before a step, ``what: done in 3.2 s`` after it."""
        self(f"{what}...")
        start = time.perf_counter()
        yield
        self(f"{what}: done in {time.perf_counter() - start:.1f} s")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in filter(str.strip, lines):
            self(f"    {line.strip()}")
        return len(text)
