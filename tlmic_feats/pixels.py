"""Decoded pixels held once: every image decoded, resized and center-cropped to a square uint8.

Finetuning reads each image many times (every epoch, and once more per evaluation); decoding a
2,000-px radiograph costs more than the network. :func:`load_pixels` decodes each image once, to
``(N, S, S)`` uint8 at the backbone's resize size ``S`` (shorter side resized to S, center
square), from which training crops are augmented and evaluation takes the same center crop as
extraction (resize to S then crop ``input_size`` equals square-crop S then crop ``input_size``).
"""

from __future__ import annotations

import numpy as np

from .errors import BadImageError


def load_pixels(
    source,
    rows: np.ndarray,
    size: int,
    interpolation: str,
    *,
    workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Decode ``rows`` of an image source to a ``(len(rows), size, size)`` uint8 array."""
    from .data.images import resize_center_crop

    out = np.empty((len(rows), size, size), dtype=np.uint8)
    if workers > 0:
        import torch

        loader = torch.utils.data.DataLoader(
            _Square(source, rows, size, interpolation),
            batch_size=64,
            num_workers=workers,
            multiprocessing_context="spawn",
        )
        pos = 0
        for batch, errors in loader:
            bad = [e for e in errors if e]
            if bad:
                raise BadImageError(bad[0])
            out[pos : pos + len(batch)] = batch.numpy()
            pos += len(batch)
        return out
    for k, i in enumerate(rows.tolist()):
        im = source.load(i, min_side=size)
        out[k] = resize_center_crop(im, resize_size=size, input_size=size, interpolation=interpolation)
    return out


class _Square:
    def __init__(self, source, rows, size, interpolation) -> None:
        self.source, self.rows, self.size, self.interpolation = source, rows, size, interpolation

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        from .data.images import resize_center_crop

        i = int(self.rows[k])
        try:
            im = self.source.load(i, min_side=self.size)
            arr = resize_center_crop(im, resize_size=self.size, input_size=self.size, interpolation=self.interpolation)
            return arr, ""
        except BadImageError as e:
            return np.zeros((self.size, self.size), np.uint8), str(e)
