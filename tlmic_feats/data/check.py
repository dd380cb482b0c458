"""``tlmic data check``: what a dataset holds, before anything is computed from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dicom import is_dicom
from .manifest import SPLITS, FileImageSource, Manifest
from .readers import DataConfig, load_manifest
from .splits import patients_straddling


@dataclass
class DataCheck:
    manifest: Manifest
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (id, error)
    straddling: list[str] = field(default_factory=list)


def check_dataset(config: DataConfig, *, decode: bool = False) -> DataCheck:
    """Read the dataset and open every image (headers only, or a full decode with ``decode``)."""
    from PIL import Image

    m = load_manifest(config)
    bad = []
    for i in range(len(m)):
        try:
            if decode or not isinstance(m.source, FileImageSource) or is_dicom(m.source.paths[i]):
                m.source.load(i)  # arrays, DICOM (frames, transfer syntax) and --decode: a full decode
            else:
                with Image.open(m.source.paths[i]) as im:
                    im.verify()
        except Exception as e:  # every failure is reported, none stops the check
            bad.append((str(m.ids[i]), f"{type(e).__name__}: {e}".splitlines()[0][:200]))
    return DataCheck(m, bad, patients_straddling(m.splits, m.patient_ids))


def format_check(c: DataCheck) -> str:
    m = c.manifest
    lines = [f"dataset: {m.root} (format {m.format}; {m.label_kind}; split from {m.split_origin})"]
    if m.meta.get("split_note"):
        lines.append(f"note: {m.meta['split_note']}")
    n_pat = len(np.unique(m.patient_ids)) if m.patient_ids is not None else None
    lines.append(f"images: {len(m)}; patients: {n_pat if n_pat is not None else 'unknown'}")
    head = f"{'label':28s}" + "".join(f"{s:>18s}" for s in SPLITS) + f"{'missing':>9s}"
    lines += ["", head]
    counts = {s: int((m.splits == s).sum()) for s in SPLITS}
    lines.append(f"{'(images)':28s}" + "".join(f"{counts[s]:>18d}" for s in SPLITS))
    if m.patient_ids is not None:
        lines.append(
            f"{'(patients)':28s}" + "".join(f"{len(np.unique(m.patient_ids[m.splits == s])):>18d}" for s in SPLITS)
        )
    if m.label_kind == "multilabel":
        for j, name in enumerate(m.label_names):
            cells = []
            for s in SPLITS:
                y = m.labels[m.splits == s, j]
                known = y[~np.isnan(y)]
                pos = int((known == 1).sum())
                cells.append(f"{pos} ({100 * pos / max(len(known), 1):.1f}%)")
            lines.append(
                f"{name[:28]:28s}" + "".join(f"{c:>18s}" for c in cells) + f"{int(np.isnan(m.labels[:, j]).sum()):>9d}"
            )
    else:
        for k, name in enumerate(m.label_names):
            cells = []
            for s in SPLITS:
                y = m.labels[m.splits == s, 0]
                n = int((y == k).sum())
                cells.append(f"{n} ({100 * n / max(len(y), 1):.1f}%)")
            lines.append(f"{name[:28]:28s}" + "".join(f"{c:>18s}" for c in cells) + f"{0:>9d}")
    if m.meta.get("uncertain"):
        u = {k: v for k, v in m.meta["uncertain"].items() if v}
        lines += [
            "",
            f"uncertain (-1) labels, policy {m.meta['policy']['uncertain']}: "
            + (", ".join(f"{k} {v}" for k, v in u.items()) or "none"),
        ]
        b = {k: v for k, v in m.meta["blank"].items() if v}
        lines.append(
            f"blank labels, policy {m.meta['policy']['blank']}: "
            + (", ".join(f"{k} {v}" for k, v in b.items()) or "none")
        )
    if m.meta.get("images_listed_but_absent"):
        lines.append(f"listed in the manifest but not found on disk: {m.meta['images_listed_but_absent']}")
    lines.append("")
    if c.straddling:
        lines.append(f"PATIENTS IN MORE THAN ONE SPLIT: {len(c.straddling)} (e.g. {', '.join(c.straddling[:5])})")
    else:
        lines.append(
            "patients in more than one split: none"
            if m.patient_ids is not None
            else "patients in more than one split: unknown (no patient ids)"
        )
    lines.append(f"unreadable images: {len(c.unreadable)}")
    lines += [f"  {i}: {e}" for i, e in c.unreadable[:20]]
    return "\n".join(lines)
