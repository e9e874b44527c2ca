"""What an image may be before it is decoded, shared by the Pillow and the DICOM paths."""

from __future__ import annotations

from medgemma_models.errors import MedGemmaError

MAX_FILE_BYTES = 512 * 1024 * 1024  # the largest file read at all (a big multi-frame DICOM fits)
MAX_PIXELS = 64 * 1024 * 1024  # per picture, checked from the header before decoding


class ImageError(MedGemmaError):
    """An image that cannot be used; the message names the file and why."""


def check_pixels(pixels: int, name: str) -> None:
    if pixels > MAX_PIXELS:
        raise ImageError(f"{name} has {pixels / 1e6:.0f} million pixels; up to {MAX_PIXELS / 1e6:.0f} million are decoded")
