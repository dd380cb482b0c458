"""DICOM radiographs to 8-bit grayscale, as a radiologist's viewer would show them.

Modality LUT (rescale slope/intercept or LUT), then VOI LUT or window (centre/width) from the
file, then scaled to 0..255 over the VOI output range (the image's own range when the file has no
window), and MONOCHROME1 inverted so that air is dark. 8 to 16 bits. Compressed transfer syntaxes
decode through pydicom's pixel-data plugins when installed (``pylibjpeg`` with
``pylibjpeg-openjpeg`` for JPEG 2000); a missing plugin is named in the error. Multi-frame files
are refused unless a frame is chosen.
"""

from __future__ import annotations

import numpy as np

from ..runtime.errors import BadImageError

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: str) -> bool:
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_dicom(path: str, *, frame: int | None = None, what: str = ""):
    """A DICOM file as a PIL ``L`` image; :class:`BadImageError` names what went wrong."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    where = path + (f" ({what})" if what else "")
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise BadImageError(f"cannot read DICOM {where}: {e}") from e
    if "PixelData" not in ds:
        raise BadImageError(f"DICOM {where} holds no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise BadImageError(f"DICOM {where} has {frames} frames; choose one with --dicom-frame N (0..{frames - 1})")
    try:
        arr = ds.pixel_array
    except Exception as e:  # a compressed transfer syntax without its decoder plugin, or bad data
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        hint = (
            " (install pylibjpeg and pylibjpeg-openjpeg)"
            if "2000" in str(name)
            else " (install a pydicom pixel-data plugin: pylibjpeg, gdcm or pillow)"
        )
        raise BadImageError(f"cannot decode pixel data of DICOM {where}, transfer syntax {name}: {e}{hint}") from e
    if frames > 1:
        if not 0 <= frame < frames:
            raise BadImageError(f"DICOM {where}: frame {frame} out of range 0..{frames - 1}")
        arr = arr[frame]
    if arr.ndim != 2:
        raise BadImageError(f"DICOM {where}: expected a grayscale image, got pixel array of shape {arr.shape}")
    x = apply_modality_lut(arr, ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        x = apply_voi_lut(x, ds, index=0).astype(np.float64)
        bits = int(ds.get("BitsStored", 16))
        lo, hi = 0.0, float(2**bits - 1) if "VOILUTSequence" not in ds else float(x.max())
        if "VOILUTSequence" in ds:
            lo = float(x.min())
    else:
        lo, hi = float(x.min()), float(x.max())
    y = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        y = 1.0 - y  # MONOCHROME1: high values are dark
    return Image.fromarray(np.round(y * 255).astype(np.uint8))
