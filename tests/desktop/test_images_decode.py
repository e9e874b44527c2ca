"""Image files to the pixels we keep: PNG, JPEG, WebP through Pillow, DICOM through pydicom, and
every bad file refused in one sentence. The DICOM files are written here with pydicom and carry a
canary patient name and ID, which must never come out."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from medgemma_desktop.images.decode import decode_image, read_image_file
from medgemma_desktop.images.limits import MAX_PIXELS, ImageError
from medgemma_desktop.images.store import ImageStore

CANARY_NAME, CANARY_ID = "Canaryson^Zebulon", "CANARY-PID-4417"


def dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> Path:
    """A DICOM file as a modality writes one: identifying fields set to the canaries."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = CANARY_NAME, CANARY_ID, "19470101"
    ds.InstitutionName, ds.AccessionNumber = "Canary General Hospital", "ACC-CANARY-9"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 16 if pixels.dtype == np.uint16 else 8
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows: int = 16, columns: int = 16, high: int = 4000) -> np.ndarray:
    return np.linspace(0, high, rows * columns).reshape(rows, columns).astype(np.uint16)


def grey(decoded) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(decoded.png)).convert("L"))


def test_png_jpeg_webp_are_decoded_and_stored_without_their_metadata(tmp_path):
    picture = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3) % 251, "RGB")
    for fmt, kind in (("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")):
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **({"exif": b"Exif\0\0GPS-CANARY"} if fmt == "JPEG" else {}))
        decoded = decode_image(buffer.getvalue(), f"photo.{kind}")
        assert (decoded.part.kind, decoded.part.width, decoded.part.height) == (kind, 64, 48)
        assert b"CANARY" not in decoded.png and Image.open(io.BytesIO(decoded.png)).format == "PNG"


def test_a_16_bit_dicom_is_rescaled_and_windowed_as_the_file_says(tmp_path):
    path = dicom(tmp_path / "xray.dcm", ramp(), RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=2000)
    decoded = read_image_file(path)
    values = grey(decoded)
    # Stored 0..4000, minus 1000: -1000..3000. The window 0±1000 maps -1000 to black and >=1000 to white.
    assert values[0, 0] == 0 and values[-1, -1] == 255
    middle = np.linspace(-1000, 3000, 256).reshape(16, 16)
    expected = np.clip((middle + 1000.5) / 1999 * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(values.astype(int) - expected).max() <= 1
    assert decoded.part.kind == "dicom"
    assert decoded.part.facts == {"modality": "DX", "body_part": "CHEST", "view": "PA"}


def test_monochrome1_is_inverted(tmp_path):
    two = grey(read_image_file(dicom(tmp_path / "m2.dcm", ramp())))
    one = grey(read_image_file(dicom(tmp_path / "m1.dcm", ramp(), "MONOCHROME1")))
    assert two[0, 0] == 0 and one[0, 0] == 255
    assert np.array_equal(one.astype(int), 255 - two.astype(int))


def test_a_chosen_frame_of_a_multi_frame_file(tmp_path):
    frames = np.stack([np.full((8, 8), value, np.uint8) for value in (10, 200, 90)])
    frames[:, 0, 0] = 0  # each frame has a range to show
    path = dicom(tmp_path / "cine.dcm", frames)
    assert grey(read_image_file(path, frame=1))[4, 4] == 255
    with pytest.raises(ImageError, match="has 3 frame"):
        read_image_file(path, frame=3)


def test_rle_decodes_a_syntax_with_no_decoder_is_named_and_damaged_data_is_said(tmp_path):
    path = dicom(tmp_path / "plain.dcm", ramp())
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert np.array_equal(grey(read_image_file(tmp_path / "rle.dcm")), grey(read_image_file(path)))

    for syntax, words in ((JPEGLSLossless, "compressed as JPEG-LS Lossless"), (JPEG2000Lossless, "damaged pixel data")):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(tmp_path / "coded.dcm")
        if syntax == JPEGLSLossless and get_decoder(syntax).is_available:
            continue  # a JPEG-LS decoder is installed here: nothing to refuse
        with pytest.raises(ImageError, match=words) as caught:
            read_image_file(tmp_path / "coded.dcm")
        assert CANARY_NAME not in str(caught.value)


def test_nothing_identifying_leaves_the_dicom_reader(tmp_path):
    decoded = read_image_file(dicom(tmp_path / "x.dcm", ramp()))
    text = repr(decoded.part.to_dict()).encode() + decoded.png
    for canary in (CANARY_NAME, CANARY_ID, "Canaryson", "Canary General", "ACC-CANARY", "19470101"):
        assert canary.encode() not in text


@pytest.mark.parametrize("name, data, words", [
    ("cut.png", None, "damaged or cut short"),
    ("notes.png", b"these are my notes, not a picture" * 10, "not an image"),
    ("empty.jpg", b"", "empty"),
    ("report.dcm", None, "no pixel data"),
])
def test_bad_files_get_one_sentence(tmp_path, name, data, words):
    if name == "cut.png":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if name == "report.dcm":
        path = dicom(tmp_path / name, ramp())
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
        data = path.read_bytes()
    with pytest.raises(ImageError, match=words) as caught:
        decode_image(data, name)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 64
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")  # tiny on disk, huge in memory
    with pytest.raises(ImageError, match="million pixels|decompression bomb"):
        decode_image(buffer.getvalue(), "bomb.png")


def test_a_4_gb_file_is_refused_without_being_read(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(4 * 2**30)  # sparse: no disk used
    with pytest.raises(ImageError, match="4.0 GB"):
        read_image_file(path)


def test_the_store_is_private_content_addressed_and_spots_damage(tmp_path):
    store = ImageStore(tmp_path / "images")
    decoded = read_image_file(dicom(tmp_path / "x.dcm", ramp()))
    path = store.put(decoded)
    assert store.put(decoded) == path and path.name == f"{decoded.part.sha256}.png"
    if os.name == "posix":
        assert (path.stat().st_mode & 0o777, store.folder.stat().st_mode & 0o777) == (0o600, 0o700)
    assert store.pixels(decoded.part.sha256).width == 16
    path.write_bytes(path.read_bytes()[:-10])
    from medgemma_desktop.conversation import ImageMissingError

    with pytest.raises(ImageMissingError):
        store.pixels(decoded.part.sha256)
    with pytest.raises(ImageMissingError):
        store.path("../../etc/passwd")
    store.delete(decoded.part.sha256)
    assert not path.exists()
