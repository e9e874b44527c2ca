"""An image file or upload to an 8-bit RGB picture we re-encode ourselves, and nothing else of it.

PNG, JPEG and WebP go through Pillow; DICOM through pydicom (`dicom.py`). What comes out is only
pixels, re-encoded as a PNG with no metadata (no EXIF, no text chunks), plus a few facts that
identify no one (`ImagePart.facts`). Everything is checked before it is decoded: a file over
`MAX_FILE_BYTES` is not read, a picture over `MAX_PIXELS` is refused from its header (a
decompression bomb), and each failure is one sentence naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgemma_models.mtmd_compat import RgbImage

from .limits import MAX_FILE_BYTES, ImageError, check_pixels

STORED_SIDE = 2048  # longer pictures are scaled down to this: the model sees 896x896 at most
PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
DICOM_PREAMBLE = 128  # bytes before the "DICM" magic


@dataclass(frozen=True)
class ImagePart:
    """An image of a message, as its meta keeps it: what it is, never where it came from."""

    sha256: str  # of the stored PNG
    kind: str  # "png", "jpeg", "webp" or "dicom": what it was decoded from
    width: int
    height: int
    size: int  # bytes of the stored PNG
    facts: dict[str, str] = field(default_factory=dict)  # DICOM: modality, body part, view (nothing identifying)

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "kind": self.kind, "width": self.width, "height": self.height,
                "size": self.size, "facts": dict(self.facts)}

    @classmethod
    def from_dict(cls, data: Any) -> ImagePart | None:
        try:
            return cls(str(data["sha256"]), str(data["kind"]), int(data["width"]), int(data["height"]),
                       int(data["size"]), {str(k): str(v) for k, v in dict(data.get("facts") or {}).items()})
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded and re-encoded: the PNG to store, its part for the message, its pixels for the model."""

    png: bytes
    part: ImagePart
    rgb: RgbImage


def looks_like_dicom(head: bytes, name: str = "") -> bool:
    return name.lower().endswith(".dcm") or head[DICOM_PREAMBLE:DICOM_PREAMBLE + 4] == b"DICM"


def read_image_file(path: Path, frame: int = 0) -> DecodedImage:
    """Decode the image at `path` (PNG, JPEG, WebP or DICOM); `frame` picks one of a multi-frame DICOM."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{path.name} is {size / 2**30:.1f} GB; images of up to {MAX_FILE_BYTES // 2**20} MB are read")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    return decode_image(data, path.name, frame)


def decode_image(data: bytes, name: str, frame: int = 0) -> DecodedImage:
    """Decode image bytes; `name` is only for the error messages (and a `.dcm` ending)."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name} is over {MAX_FILE_BYTES // 2**20} MB; images of up to that size are read")
    if not data:
        raise ImageError(f"{name} is empty")
    if looks_like_dicom(data[:DICOM_PREAMBLE + 4], name):
        from .dicom import dicom_picture

        picture, facts = dicom_picture(data, name, frame)
        return _stored(picture, "dicom", facts)
    picture, kind = _pillow_picture(data, name)
    return _stored(picture, kind, {})


def _pillow_picture(data: bytes, name: str) -> tuple[Any, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            kind = PILLOW_FORMATS.get(picture.format or "")
            if kind is None:
                raise ImageError(f"{name} is a {picture.format} image; PNG, JPEG, WebP and DICOM are taken")
            check_pixels(picture.width * picture.height, name)
            picture.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} has too many pixels to decode safely (a decompression bomb?)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image (not PNG, JPEG, WebP or DICOM)") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's word for a truncated or damaged file
        raise ImageError(f"{name} is damaged or cut short: {exc}") from exc
    return picture.convert("RGB"), kind


def _stored(picture: Any, kind: str, facts: dict[str, str]) -> DecodedImage:
    """The picture scaled to `STORED_SIDE` at most and written as a PNG that carries nothing else."""
    from PIL import Image

    picture = picture.convert("RGB")
    if max(picture.size) > STORED_SIDE:
        scale = STORED_SIDE / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")  # no pnginfo, no exif: pixels only
    png = buffer.getvalue()
    part = ImagePart(hashlib.sha256(png).hexdigest(), kind, picture.width, picture.height, len(png), facts)
    return DecodedImage(png, part, RgbImage(picture.width, picture.height, picture.tobytes()))
