"""A loss curve as a PNG, drawn with numpy and written with zlib (matplotlib is not a dependency).

Grey: the loss of each step (one sequence). Blue: its running mean over `window` steps. Orange: the
held-out loss measured at the end of each epoch (and before the first step). Dashed vertical lines:
epoch boundaries. Axis labels use a built-in 3×5 pixel font.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medgemma_models.files import atomic_output

WIDTH, HEIGHT = 800, 400
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 40
WHITE, BLACK, GREY, BLUE, LIGHT = (255, 255, 255), (0, 0, 0), (190, 190, 190), (31, 90, 200), (225, 225, 225)
ORANGE = (220, 110, 20)
SCALE = 2  # font pixels per glyph pixel

# 3×5 glyphs, rows top to bottom, "1" = ink; letters are drawn as capitals.
GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", " ": "000000000000000",
    "A": "010101111101101", "C": "011100100100011", "D": "110101101101110", "U": "101101101101111", "E": "111100110100111", "F": "111100110100100",
    "H": "101101111101101", "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "R": "110101110101101", "S": "011100010001110",
    "T": "111010010010010",
}


def write_loss_png(losses: Sequence[float], path: Path, steps_per_epoch: int | None = None, window: int = 25,
                   heldout: Sequence[tuple[int, float]] = ()) -> None:
    """Draw the per-step losses, their running mean and the held-out loss into an 800×400 PNG at `path`.

    `heldout` holds (steps trained, loss) pairs. The file is replaced atomically.
    """
    if not losses:
        raise ValueError("no losses to plot")
    image = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    top = _nice_ceiling(max([*losses, *(loss for _, loss in heldout)]))
    n = len(losses)

    def px(step: float) -> float:
        return x0 + (x1 - x0) * (step / max(1, n - 1))

    def py(loss: float) -> float:
        return y0 + (y1 - y0) * (min(loss, top) / top)

    for i in range(6):  # horizontal grid and y tick labels
        value = top * i / 5
        y = round(py(value))
        image[y, x0:x1 + 1] = LIGHT
        _text(image, _format(value), x0 - 6 - _text_width(_format(value)), y - 5)
    if steps_per_epoch and steps_per_epoch < n:
        for boundary in range(steps_per_epoch, n, steps_per_epoch):
            x = round(px(boundary - 0.5))
            image[y1:y0:6, x] = BLACK
            image[y1 + 1:y0:6, x] = BLACK
    image[y1:y0 + 1, x0] = BLACK
    image[y0, x0:x1 + 1] = BLACK
    for step in _x_ticks(n):
        x = round(px(step - 1))
        image[y0:y0 + 4, x] = BLACK
        _text(image, str(step), x - _text_width(str(step)) // 2, y0 + 8)

    points = [(px(i), py(v)) for i, v in enumerate(losses)]
    _polyline(image, points, GREY, thickness=1)
    mean = _running_mean(losses, window)
    _polyline(image, [(px(i), py(v)) for i, v in enumerate(mean)], BLUE, thickness=2)
    if heldout:
        # After s steps the model has seen steps 0..s-1: its point sits at x of step s - 1 (step 0 before training).
        marks = [(px(max(0, steps - 1)), py(loss)) for steps, loss in heldout]
        _polyline(image, marks, ORANGE, thickness=2)
        for x, y in marks:
            image[max(0, round(y) - 3):round(y) + 4, max(0, round(x) - 3):round(x) + 4] = ORANGE

    _text(image, "step", (x0 + x1) // 2 - _text_width("step") // 2, HEIGHT - 14)
    _text(image, "loss", 8, 8)
    legend = f"mean of {window} steps"
    _text(image, legend, x1 - _text_width(legend), 8, BLUE)
    _text(image, "per step", x1 - _text_width(legend) - 24 - _text_width("per step"), 8, GREY)
    if heldout:
        right = x1 - _text_width(legend) - 24 - _text_width("per step") - 24
        _text(image, "held out", right - _text_width("held out"), 8, ORANGE)
    with atomic_output(Path(path), force=True) as temporary:
        temporary.write_bytes(encode_png(image))


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an (height, width, 3) uint8 array."""
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), image.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def _running_mean(values: Sequence[float], window: int) -> list[float]:
    sums = np.cumsum([0.0, *values])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _x_ticks(n: int) -> list[int]:
    step = _nice_ceiling(n / 8)
    step = max(1, int(step))
    return [1, *range(step, n + 1, step)] if n > 1 else [1]


def _format(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"


def _polyline(image: np.ndarray, points: Sequence[tuple[float, float]], color: tuple[int, int, int], thickness: int) -> None:
    for (xa, ya), (xb, yb) in zip(points, points[1:] or points):
        count = int(max(abs(xb - xa), abs(yb - ya))) + 2
        for t in np.linspace(0.0, 1.0, count):
            x, y = round(xa + (xb - xa) * t), round(ya + (yb - ya) * t)
            image[y:y + thickness, x:x + thickness] = color


def _text_width(text: str) -> int:
    return len(text) * 4 * SCALE - SCALE


def _text(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int] = BLACK) -> None:
    for index, char in enumerate(text):
        glyph = GLYPHS[char.upper()]
        for row in range(5):
            for col in range(3):
                if glyph[row * 3 + col] == "1":
                    gx, gy = x + (index * 4 + col) * SCALE, y + row * SCALE
                    image[gy:gy + SCALE, gx:gx + SCALE] = color
