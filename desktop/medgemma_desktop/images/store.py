"""The images of the chats, stored once each under their sha256, as private as the chat history.

`<data folder>/images/<sha256>.png`: the folder 0700, each file 0600, written atomically. A file
is named by its content, so the same image sent twice is stored once, and a damaged file is
found when its hash no longer matches (it then reads as missing: "[image missing]").
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from medgemma_models.errors import OutputError, StoreError
from medgemma_models.files import atomic_output
from medgemma_models.mtmd_compat import RgbImage
from medgemma_models.store import home, private_folder

from ..conversation import ImageMissingError
from .decode import DecodedImage

_SHA256 = re.compile(r"[0-9a-f]{64}")


def images_folder() -> Path:
    return home() / "images"


class ImageStore:
    """Content-addressed PNGs in one private folder (by default `images_folder()`)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else images_folder()

    def path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ImageMissingError(sha256)  # never a path from anything but our own hashes
        return self.folder / f"{sha256}.png"

    def put(self, image: DecodedImage) -> Path:
        """Store `image` (once: an image stored already is left as it is); StoreError when the disk fails."""
        path = self.path(image.part.sha256)
        if path.is_file():
            return path
        try:
            private_folder(self.folder)
            with atomic_output(path, force=True, per_process=True) as partial:
                partial.write_bytes(image.png)
        except OSError as exc:
            raise StoreError(f"could not store the image: {exc.strerror or exc}") from exc
        except OutputError as exc:  # a full disk, say: nothing half-written is left
            raise StoreError(f"could not store the image: {exc}") from exc
        return path

    def png(self, sha256: str) -> bytes:
        """The stored PNG; ImageMissingError when it is gone or no longer what was stored."""
        try:
            data = self.path(sha256).read_bytes()
        except OSError as exc:
            raise ImageMissingError(sha256) from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ImageMissingError(sha256)
        return data

    def pixels(self, sha256: str) -> RgbImage:
        """The image's RGB pixels, for the model; ImageMissingError when it cannot be read."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.png(sha256))) as picture:
                rgb = picture.convert("RGB")
                return RgbImage(rgb.width, rgb.height, rgb.tobytes())
        except (OSError, ValueError) as exc:
            raise ImageMissingError(sha256) from exc

    def delete(self, sha256: str) -> None:
        """Unlink the image's file (a file already gone is fine)."""
        try:
            os.unlink(self.path(sha256))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"could not delete an image of the chat: {exc.strerror or exc}") from exc
