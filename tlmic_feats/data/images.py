"""Decoding and geometric preprocessing of single images.

Images are decoded to 8-bit grayscale, the shorter side resized to ``resize_size`` and the center
cropped to ``input_size`` x ``input_size``, which is what torchvision's and timm's evaluation
transforms do. The result stays uint8: copying to three channels and the backbone's
normalization happen on the device, batched (see :mod:`tlmic_feats.backbones.preprocess`).

Two other libraries' conventions are followed where their models are used: a transformers image
processor (``hf-FILTER``) resizes with the same PIL filters but rounds its crop offsets down, and
torchxrayvision (``xrv``) takes the image's centre square, then resizes it with scikit-image, in
float: its pixels stay float32 (:func:`pixel_dtype`), as torchxrayvision's own transform leaves them.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..runtime.errors import BadImageError

# A PIL filter with torchvision's crop offsets (Resize + CenterCrop), the same filter with a transformers
# image processor's offsets (rounded down), or torchxrayvision's XRayCenterCrop + XRayResizer.
FILTERS = ("nearest", "bilinear", "bicubic")
INTERPOLATIONS = (*FILTERS, *(f"hf-{f}" for f in FILTERS), "xrv")


def pixel_dtype(interpolation: str) -> np.dtype:
    """The dtype of the host's resized pixels (0..255) for ``interpolation``: uint8, or float32 for
    torchxrayvision (``xrv``), whose resize works in float: rounding its result to 8 bits would move a
    pixel by up to half a grey level (4.0 of its 2,048)."""
    return np.dtype(np.float32 if interpolation == "xrv" else np.uint8)


def open_image(path: str, *, what: str = "", min_side: int | None = None, dicom_frame: int | None = None):
    """Open an image file and return it as an 8-bit grayscale PIL image (mode ``L``).

    16-bit and 32-bit grayscale are scaled by their nominal range (not by min and max, which
    would change with the image's content); colour images are converted with ITU-R 601 luma.

    With ``min_side``, a JPEG is decoded at a reduced scale (PIL ``draft``): the decoder picks the
    largest power-of-two reduction that keeps both sides at least ``min_side``, so a later resize
    to ``min_side`` loses nothing visible while a 2,000-px radiograph decodes several times faster.
    """
    from PIL import Image, UnidentifiedImageError

    from .dicom import is_dicom, read_dicom

    where = f"{path}" + (f" ({what})" if what else "")
    if is_dicom(path):
        return read_dicom(path, what=what, frame=dicom_frame)
    try:
        with warnings.catch_warnings():
            # PIL only warns between its pixel limit and twice that; tlmic refuses both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im_ctx = Image.open(path)
        with im_ctx as im:
            if min_side is not None and im.format == "JPEG":
                im.draft("L", (min_side, min_side))
            im.load()
            return to_gray8(im)
    except FileNotFoundError as e:
        raise BadImageError(f"image file not found: {where}") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(f"image {where} is too large to decode safely: {e}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadImageError(f"cannot decode image {where}: {e}") from e


def to_gray8(im):
    """Convert any PIL image to mode ``L``."""
    from PIL import Image

    if im.mode == "L":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.round(a / 257.0).astype(np.uint8))
    if im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.round(a * (255.0 / hi)), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite on black: transparent background is outside the body in a radiograph.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("L")
    return im.convert("L")


def crop_offset(excess: int, interpolation: str) -> int:
    """Where a centre crop starts when ``excess`` pixels of a side are left over: rounded down by a
    transformers image processor (``hf-*``), half to even by torchvision's ``CenterCrop`` (the others)."""
    return excess // 2 if interpolation.startswith("hf-") else int(round(excess / 2.0))


def resize_center_crop(
    im, *, resize_size: int, input_size: int, interpolation: str = "bilinear", then_crop: int = 0
) -> np.ndarray:
    """Resize the shorter side to ``resize_size``, center-crop ``input_size``; ``(S, S)`` of
    :func:`pixel_dtype` (uint8; float32 for ``xrv``).

    Matches ``torchvision.transforms.Resize(resize_size)`` + ``CenterCrop(input_size)`` on a PIL
    image (PIL's antialiased filters, torchvision's rounding of the long side and crop offsets).
    ``hf-FILTER``: a transformers image processor's ``resize`` (shortest edge) and ``center_crop``
    (the PIL backend), whose crop offsets round down. ``xrv``: see :func:`xrv_resize`.

    ``then_crop``: this square will be centre-cropped again to ``then_crop`` (by
    :func:`tlmic_feats.backbones.preprocess.center_crop`), as the pixel cache's squares are for the
    evaluation view; its offsets are then chosen so that the two crops give exactly the one crop of
    ``then_crop`` from the resized image (two offsets each rounded would be a pixel off it for half of
    the non-square films at reduced input sizes).
    """
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")

    def offset(side: int) -> int:
        if then_crop and then_crop < input_size:
            return crop_offset(side - then_crop, interpolation) - crop_offset(input_size - then_crop, interpolation)
        return crop_offset(side - input_size, interpolation)

    if interpolation == "xrv":
        a = xrv_resize(im, resize_size)
        o = offset(a.shape[-1])
        return a[o : o + input_size, o : o + input_size]
    filt = interpolation.removeprefix("hf-")
    resample = {
        "nearest": Image.NEAREST,
        "bilinear": Image.BILINEAR,
        "bicubic": Image.BICUBIC,
    }[filt]
    w, h = im.size
    if w <= h:
        nw, nh = resize_size, int(resize_size * h / w)
    else:
        nh, nw = resize_size, int(resize_size * w / h)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), resample)
    top, left = offset(nh), offset(nw)
    if top < 0 or left < 0:
        raise ValueError(f"resize_size {resize_size} is smaller than input_size {input_size}")
    return np.asarray(im.crop((left, top, left + input_size, top + input_size)), dtype=np.uint8)


def xrv_resize(im, size: int) -> np.ndarray:
    """torchxrayvision's evaluation geometry on an 8-bit grey image: ``XRayCenterCrop`` (the centre
    square of the shorter side, its offsets as torchxrayvision computes them), then ``XRayResizer(size)``
    (``skimage.transform.resize``: Gaussian anti-aliasing, bilinear, outside the image = 0 of its
    [-1024, 1024] scale); float32 ``(size, size)`` in 0..255, not rounded.

    torchxrayvision resizes after mapping grey levels to [-1024, 1024]; the resize is affine-equivariant,
    so resizing the grey levels with outside = 127.5 (its 0) and mapping afterwards on the device gives
    the same values up to float32 rounding (within 3e-7 of its 1,024 on real chest films).
    """
    try:
        from skimage.transform import resize
    except ImportError as e:  # scikit-image comes with torchxrayvision
        from ..runtime.errors import MissingDependencyError

        raise MissingDependencyError(
            f"torchxrayvision's preprocessing needs scikit-image ({e}); pip install 'tlmic[xrv]'"
        ) from None
    a = np.asarray(im, dtype=np.float32)
    h, w = a.shape
    c = min(h, w)
    top, left = h // 2 - c // 2, w // 2 - c // 2
    square = a[None, top : top + c, left : left + c]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as XRayResizer does
        r = resize(square, (1, size, size), mode="constant", cval=127.5, preserve_range=True)[0]
    return r.astype(np.float32)
