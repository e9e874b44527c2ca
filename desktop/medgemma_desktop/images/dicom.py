"""A DICOM file to an 8-bit picture through pydicom, keeping nothing that identifies the patient.

The pixels are shown as the file asks: the modality rescale (slope, intercept or LUT), then the
file's VOI LUT or window centre/width (else the full range), MONOCHROME1 inverted, one chosen
frame of a multi-frame file. Compressed transfer syntaxes decode through pydicom's plugins when
one is installed; otherwise the error names the syntax.

Only `FACTS` leave this module (modality, body part, view, laterality). Patient name, ID, birth
date, institution, accession number and every other attribute of the DICOM basic confidentiality
profile are never read into anything we keep, show or log: error messages name the file we were
given and the pixel format, nothing from the header. Text burned into the pixels stays, and the
notice says so.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .limits import ImageError, check_pixels

# DICOM keyword -> the fact's name in the message meta. None of these identifies a person.
FACTS = {"Modality": "modality", "BodyPartExamined": "body_part", "ViewPosition": "view", "ImageLaterality": "laterality"}
NOTICE = ("Only the pixels of a DICOM file, and its modality, body part and view, are kept: the patient's name, "
          "ID, birth date, the institution and the other identifying fields are not stored, shown or sent. Text "
          "burned into the image itself (annotations, labels) cannot be removed: check the picture before sending.")


def dicom_picture(data: bytes, name: str, frame: int = 0) -> tuple[Any, dict[str, str]]:
    """A PIL picture of frame `frame` of the DICOM `data`, and its non-identifying facts."""
    import pydicom
    from PIL import Image
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=name.lower().endswith(".dcm"))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ImageError(f"{name} is not a readable DICOM file") from exc
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise ImageError(f"{name} is a DICOM file with no pixel data (a report or structured data, not an image)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageError(f"{name} does not say the size of its image") from exc
    check_pixels(rows * columns, name)
    if not 0 <= frame < frames:
        raise ImageError(f"{name} has {frames} frame(s); frame {frame + 1} does not exist")
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except RuntimeError:  # pydicom has no decoder for this syntax at all
            available = False
        if not available:
            raise ImageError(f"{name} is compressed as {syntax.name}, which no installed DICOM decoder reads "
                             "(pylibjpeg or GDCM would)")
    try:
        pixels = pixel_array(dataset, index=frame if frames > 1 else None)
    except (RuntimeError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ImageError(f"{name} has damaged pixel data, or pixel data that does not match its header") from exc
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour: pydicom gives RGB already
        picture = Image.fromarray(_to_8bit(pixels.astype(np.float64)), "RGB")
    elif pixels.ndim == 2:
        values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
        window = _window(dataset)
        if "VOILUTSequence" in dataset:
            grey = _to_8bit(np.asarray(apply_voi_lut(values, dataset, index=0), dtype=np.float64))
        elif window is not None:
            grey = _windowed(values, *window)
        else:
            grey = _to_8bit(values)
        if photometric == "MONOCHROME1":  # low values are white
            grey = 255 - grey
        picture = Image.fromarray(grey, "L")
    else:
        raise ImageError(f"{name} has pixels of shape {pixels.shape}, which is not a picture this app shows")
    facts = {key: str(dataset.get(keyword)) for keyword, key in FACTS.items() if dataset.get(keyword)}
    return picture, facts


def _window(dataset: Any) -> tuple[float, float] | None:
    """The file's first window (centre, width), if it has one."""
    centre, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if centre is None or width is None:
        return None
    from pydicom.multival import MultiValue

    # A file may list several windows (say, lung and mediastinum): the first is its default.
    centre, width = (v[0] if isinstance(v, (MultiValue, list, tuple)) and len(v) else v for v in (centre, width))
    try:
        centre_value, width_value = float(centre), float(width)
    except (TypeError, ValueError):
        return None
    return (centre_value, width_value) if width_value >= 1 else None


def _windowed(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2) onto 0..255."""
    low = centre - 0.5 - (width - 1) / 2
    scaled = (values - low) / (width - 1) * 255.0 if width > 1 else (values > centre - 0.5) * 255.0
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Stretch the range that is there to 0..255 (after windowing, that is the window's range)."""
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip((values - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)
