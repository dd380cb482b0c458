"""Dataset readers: ImageFolder directories, CSV manifests and MedMNIST ``.npz`` files.

Each reader turns one on-disk format into a :class:`~tlmic_feats.data.manifest.Manifest`.
:func:`load_manifest` picks the reader from :class:`DataConfig` and completes the split.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import DataFormatError, MissingColumnError, choices
from ..runtime.options import coerce_paths, name_list, option
from .chestxray import BLANK_POLICIES, UNCERTAIN_POLICIES, VIEWS
from .manifest import ArrayImageSource, FileImageSource, Manifest, file_sha256
from .splits import DEFAULT_FRACTIONS, make_splits
from .tables import read_label_table

FORMATS = ("auto", "imagefolder", "csv", "medmnist", "chexpert", "nih", "dicom")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".dcm", ".dicom")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
# Class names that mean "no finding": for a two-class dataset the one matching is class 0.
NEGATIVE_NAMES = {
    "normal", "negative", "neg", "healthy", "no finding", "no_finding", "nofinding",
    "benign", "control", "absent", "no", "false", "0",
}  # fmt: skip
# Label names of the MedMNIST files a chest X-ray user meets (the .npz files carry none).
MEDMNIST_LABELS = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "chestmnist": (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
        "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural",
        "hernia",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class DataConfig:
    """How to read a dataset. Recorded in every store and run directory.

    Column options apply to CSV manifests; ``patient_regex`` extracts a patient id from each
    file name (first group) for ImageFolder and CSV data without a patient column.
    """

    path: str = option(help="Dataset: an ImageFolder directory (optionally train/ val/ test/), a CSV manifest, or a MedMNIST .npz.", flag="--data")
    format: str = option("auto", "Dataset format.", choices=FORMATS)
    path_column: str = option("path", "CSV: column of image paths.")
    label_columns: tuple[str, ...] = option(
        (), "CSV: comma-separated label column(s) (default: the column named 'label').", parse=name_list
    )
    split_column: str = option("split", "CSV: split column (train/val/test), if any.")
    patient_column: str = option("patient_id", "CSV: patient-id column, if any.")
    id_column: str = option("", "CSV: image-id column (default: the path).")
    image_root: str = option("", "CSV: folder image paths are relative to (default: the CSV's folder).")
    positive_class: str = option("", "Binary data: the positive class name.", flag="--positive")
    patient_regex: str = option("", r"Patient id from each file name, e.g. 'person(\d+)_'.")
    split_seed: int = option(0, "Seed of the split made when the data has none.", ge=0)
    split_fractions: tuple[float, float, float] = option(
        DEFAULT_FRACTIONS, "Train/val/test shares of a split made when the data has none.", cli=False
    )
    allow_outside_root: bool = option(False, "Allow manifest paths outside the data root.")
    uncertain: str = option(
        "ignore", "CheXpert -1 (uncertain) labels: U-Ones, U-Zeros, or U-Ignore (masked).", choices=UNCERTAIN_POLICIES
    )
    blank: str = option("zeros", "CheXpert blank labels: negative, or missing (masked).", choices=BLANK_POLICIES)
    views: str = option("frontal", "CheXpert views to keep.", choices=VIEWS)
    dicom_frame: int = option(-1, "Multi-frame DICOM: the frame to use (-1: refuse).", ge=-1)

    def __post_init__(self) -> None:
        coerce_paths(self, "path", "image_root")


def detect_format(path: str | Path) -> str:
    """The format ``auto`` resolves to for ``path``."""
    from .chestxray import chest_layout

    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"dataset path does not exist: {p}")
    if p.is_dir():
        # the named layouts first (here or one level down), class folders last
        found = chest_layout(p)
        return found[0] if found else "imagefolder"
    if p.suffix.lower() == ".npz":
        return "medmnist"
    if p.name.startswith("Data_Entry_2017"):
        return "nih"
    if p.suffix.lower() in (".csv", ".tsv"):
        with open(p, encoding="utf-8-sig", errors="replace") as f:
            if "Frontal/Lateral" in f.readline():
                return "chexpert"
        return "csv"
    raise DataFormatError(
        f"cannot tell the format of {p}: expected a directory, a .csv or a .npz file "
        f"(or pass --format {'|'.join(FORMATS[1:])})"
    )


def load_manifest(config: DataConfig) -> Manifest:
    """Read the dataset described by ``config``; the split is completed when the data lacks one."""
    fmt = config.format
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown data format {fmt!r}; valid: {choices(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(config.path)
    elif not Path(config.path).exists():
        raise DataFormatError(f"dataset path does not exist: {config.path}")
    from .chestxray import read_chexpert, read_nih

    reader = {
        "imagefolder": _read_imagefolder,
        "csv": _read_csv,
        "medmnist": _read_medmnist,
        "chexpert": read_chexpert,
        "nih": read_nih,
        "dicom": _read_imagefolder,  # class folders of DICOM files (DICOM is decoded per file)
    }[fmt]
    fields = reader(config)
    existing = fields.pop("splits")
    # labels to stratify on that no label policy changes (CheXpert); the labels themselves otherwise
    split_labels = fields.pop("split_labels", None)
    complete = existing is not None and "" not in set(existing.tolist()) and "val" in set(existing.tolist())
    splits = make_splits(
        fields["labels"] if split_labels is None else split_labels,
        fields["label_kind"],
        patient_ids=fields.get("patient_ids"),
        existing=existing,
        fractions=config.split_fractions,
        seed=config.split_seed,
    )
    meta = dict(fields.pop("meta", {}) or {})
    if complete:
        origin = "data"
    elif existing is not None:
        origin = f"data, val carved from train (seed={config.split_seed})"
    elif meta.get("split_note"):  # an official test split the reader looked for and did not find
        origin = f"{meta['split_note']} (seed={config.split_seed})"
    else:
        origin = f"generated (seed={config.split_seed})"
    if existing is not None and fields.get("patient_ids") is not None:
        from .splits import patients_straddling

        # The data's own split is kept as given, but a violation of patient separation is reported
        # (extract logs it; `tlmic data check` lists the patients).
        meta["patients_straddling"] = len(patients_straddling(splits, fields["patient_ids"]))
    return Manifest(splits=splits, split_origin=origin, format=fmt, meta=meta, **fields)


# --- class handling ----------------------------------------------------------------------------


def _order_classes(names: list[str], positive: str) -> list[str]:
    """Sorted class names; for two classes, the negative-sounding one (or not ``positive``) first."""
    names = sorted(names, key=_natural_key)
    if positive:
        if positive not in names:
            raise DataFormatError(f"positive class {positive!r} not found; classes: {choices(names)}")
        if len(names) != 2:
            raise DataFormatError(f"--positive needs two classes; found {len(names)}: {choices(names)}")
        return [n for n in names if n != positive] + [positive]
    if len(names) == 2 and names[1].strip().lower() in NEGATIVE_NAMES:
        names = names[::-1]
    return names


def _natural_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def _single_label(values: list[str], column: str, positive: str):
    """Labels, kind and names from one categorical column.

    Numeric values are compared as numbers ("1" and "1.0" are one class, named "1").
    """
    values = [_canonical_number(v) for v in values]
    classes = _order_classes(sorted(set(values)), positive)
    if len(classes) < 2:
        raise DataFormatError(f"label column {column!r} holds one class only: {classes}")
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([[index[v]] for v in values], dtype=np.float32)
    kind = "binary" if len(classes) == 2 else "multiclass"
    if kind == "binary" and classes == ["0", "1"]:
        classes = [f"not {column}", column]
    return labels, kind, tuple(classes)


def _canonical_number(v: str) -> str:
    try:
        x = float(v)
    except ValueError:
        return v
    if not np.isfinite(x):
        return v
    return str(int(x)) if x == int(x) else repr(x)


def _patients_from_names(paths: list[str], pattern: str) -> np.ndarray:
    rx = re.compile(pattern)
    out = []
    for p in paths:
        m = rx.search(os.path.basename(p))
        if not m:
            raise DataFormatError(f"--patient-regex {pattern!r} does not match file name {os.path.basename(p)!r}")
        # the first group that matched (alternatives such as 'person(\d+)_|(IM-\d+)-' are allowed)
        out.append(next((g for g in m.groups() if g is not None), m.group(0)))
    return np.array(out)


# --- ImageFolder --------------------------------------------------------------------------------


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_imagefolder(config: DataConfig) -> dict:
    root = Path(config.path).resolve()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [p.name for p in subdirs if p not in split_dirs]
        raise DataFormatError(
            f"{root} mixes split folders ({', '.join(p.name for p in split_dirs)}) with other "
            f"folders ({choices(others)}); use train/ val/ test/ each holding class folders"
        )
    tops = [(SPLIT_ALIASES[p.name.lower()], p) for p in split_dirs] or [("", root)]
    rows: list[tuple[str, str, str]] = []  # (split, class, path)
    for split, top in tops:
        for cdir in sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")):
            rows.extend((split, cdir.name, str(f)) for f in _list_images(cdir))
    if not rows:
        csvs = [
            f"{f.name} ({'empty' if f.stat().st_size == 0 else 'not CheXpert: no Frontal/Lateral column'})"
            for f in sorted(root.glob("*.csv"))
        ]
        raise DataFormatError(
            f"no images found under {root}: expected class folders (or train/ val/ test/ with class folders) "
            f"holding {', '.join(IMAGE_EXTENSIONS)} files, or a CheXpert (train.csv, valid.csv) or NIH "
            "(Data_Entry_2017*.csv) folder here or one level down" + (f"; found {', '.join(csvs)}" if csvs else "")
        )
    paths = [r[2] for r in rows]
    labels, kind, names = _single_label([r[1] for r in rows], "class folder", config.positive_class)
    fields = {
        "ids": np.array([os.path.relpath(p, root) for p in paths]),
        "source": FileImageSource(tuple(paths), str(root), _frame(config)),
        "labels": labels,
        "label_kind": kind,
        "label_names": names,
        "splits": np.array([r[0] for r in rows]) if split_dirs else None,
        "patient_ids": _patients_from_names(paths, config.patient_regex) if config.patient_regex else None,
        "root": str(root),
    }
    return fields


# --- CSV ----------------------------------------------------------------------------------------


def _read_csv(config: DataConfig) -> dict:
    csv_path = Path(config.path).resolve()
    root = Path(config.image_root).resolve() if config.image_root else csv_path.parent
    header, records = read_label_table(csv_path)
    if config.path_column not in header:
        raise MissingColumnError(
            f"path column {config.path_column!r} not in {csv_path.name}; columns: {choices(header)} (set --path-column)"
        )
    reserved = {config.path_column, config.split_column, config.patient_column, config.id_column}
    if config.label_columns:
        label_cols = list(config.label_columns)
        missing = [c for c in label_cols if c not in header]
        if missing:
            raise MissingColumnError(
                f"label column(s) {', '.join(map(repr, missing))} not in {csv_path.name}; columns: {choices(header)}"
            )
    elif "label" in header:
        label_cols = ["label"]
    else:  # never guessed: a CSV's other columns are as often age or view as they are findings
        others = [h for h in header if h not in reserved]
        raise MissingColumnError(
            f"{csv_path.name} has no 'label' column: name the label column(s) with --label-columns "
            f"(label_columns); other columns: {choices(others) if others else '(none)'}"
        )

    paths = []
    for i, r in enumerate(records):
        rel = r[config.path_column]
        if not rel:
            raise DataFormatError(f"{csv_path.name} row {i + 2}: empty {config.path_column!r}")
        p = (root / rel).resolve()
        if not config.allow_outside_root and not p.is_relative_to(root):
            raise DataFormatError(
                f"{csv_path.name} row {i + 2}: path {rel!r} leaves the data root {root} "
                "(pass --allow-outside-root to permit)"
            )
        paths.append(str(p))

    if len(label_cols) == 1:
        col = label_cols[0]
        values = [r[col] for r in records]
        empty = [i for i, v in enumerate(values) if v == "" or v.lower() in ("nan", "na", "null")]
        if empty:
            raise DataFormatError(
                f"{csv_path.name} row {empty[0] + 2}: missing label {values[empty[0]]!r} in column {col!r}"
            )
        labels, kind, names = _single_label(values, col, config.positive_class)
    else:
        labels = np.empty((len(records), len(label_cols)), dtype=np.float32)
        for i, r in enumerate(records):
            for j, col in enumerate(label_cols):
                labels[i, j] = _binary_value(r[col], csv_path.name, i + 2, col)
        kind, names = "multilabel", tuple(label_cols)

    splits = None
    if config.split_column in header:
        raw = [r[config.split_column].lower() for r in records]
        bad = sorted({s for s in raw if s and s not in SPLIT_ALIASES})
        if bad:
            raise DataFormatError(f"split column {config.split_column!r} holds {choices(bad)}; valid: train, val, test")
        splits = np.array([SPLIT_ALIASES.get(s, "") for s in raw])

    if config.patient_column in header:
        patients = np.array([r[config.patient_column] for r in records])
    elif config.patient_regex:
        patients = _patients_from_names(paths, config.patient_regex)
    else:
        patients = None

    if config.id_column:
        if config.id_column not in header:
            raise MissingColumnError(
                f"id column {config.id_column!r} not in {csv_path.name}; columns: {choices(header)}"
            )
        ids = np.array([r[config.id_column] for r in records])
    else:
        ids = np.array([r[config.path_column] for r in records])
    return {
        "ids": ids,
        "source": FileImageSource(tuple(paths), str(root), _frame(config)),
        "labels": labels,
        "label_kind": kind,
        "label_names": names,
        "splits": splits,
        "patient_ids": patients,
        "root": str(root),
    }


def _frame(config: DataConfig) -> int | None:
    return config.dicom_frame if config.dicom_frame >= 0 else None


def _binary_value(v: str, name: str, row: int, col: str) -> float:
    if v == "":
        return np.nan
    try:
        x = float(v)
    except ValueError:
        x = None
    if x not in (0.0, 1.0):
        raise DataFormatError(f"{name} row {row}: label {col!r} is {v!r}; valid: 0, 1 or empty (missing)")
    return x


# --- MedMNIST -----------------------------------------------------------------------------------


def _read_medmnist(config: DataConfig) -> dict:
    import zipfile

    path = Path(config.path).resolve()
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip archive
            raise DataFormatError(f"{path.name} is not an .npz archive (a zip of <split>_images, <split>_labels)")
    try:
        z = np.load(path, allow_pickle=False)
    except unreadable as e:
        raise DataFormatError(f"{path.name} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataFormatError(
            f"{path.name} is a single array, not an .npz archive of <split>_images and <split>_labels"
        )
    with z:
        keys = set(z.files)
        splits_found = [s for s in ("train", "val", "test") if f"{s}_images" in keys]
        if not splits_found:
            raise MissingColumnError(f"{path.name} has no '<split>_images' arrays; arrays: {choices(sorted(keys))}")
        arrays, labels, index, splits = [], [], [], []
        for k, s in enumerate(splits_found):
            if f"{s}_labels" not in keys:
                raise MissingColumnError(f"{path.name} has {s}_images but no {s}_labels")
            try:
                imgs, labs = z[f"{s}_images"], z[f"{s}_labels"]
            except unreadable as e:
                raise DataFormatError(f"{path.name}: cannot read {s}_images / {s}_labels ({e})") from None
            if imgs.ndim not in (3, 4):
                raise DataFormatError(f"{path.name}: {s}_images has shape {imgs.shape}; expected (N, H, W[, C])")
            if labs.ndim not in (1, 2) or labs.dtype.kind not in "biuf":
                raise DataFormatError(
                    f"{path.name}: {s}_labels is {labs.dtype} of shape {labs.shape}; expected numbers, (N,) or (N, L)"
                )
            if len(imgs) != len(labs):
                raise DataFormatError(f"{path.name}: {len(imgs)} {s}_images but {len(labs)} {s}_labels")
            if len(imgs) == 0:
                raise DataFormatError(f"{path.name}: {s}_images holds no images")
            arrays.append(imgs)
            labels.append(labs.reshape(len(labs), -1).astype(np.float32))
            index.append(np.stack([np.full(len(imgs), k), np.arange(len(imgs))], axis=1))
            splits.extend([s] * len(imgs))
    widths = sorted({lab.shape[1] for lab in labels})
    if len(widths) > 1:
        raise DataFormatError(f"{path.name}: the splits' labels have different widths {widths}")
    lab = np.concatenate(labels)
    if not np.all(np.isfinite(lab)):
        raise DataFormatError(f"{path.name}: labels hold NaN or inf")
    valid = np.isin(lab, (0, 1)) if lab.shape[1] > 1 else (lab >= 0) & (lab == np.round(lab))
    if not valid.all():
        bad = lab[~valid][0]
        want = "0 or 1 (multi-label)" if lab.shape[1] > 1 else "class indices 0, 1, 2, ..."
        raise DataFormatError(f"{path.name}: a label is {bad:g}; valid: {want}")
    stem = path.stem.split("_")[0].lower()
    known = MEDMNIST_LABELS.get(stem)
    if lab.shape[1] > 1:
        kind = "multilabel"
        names = known if known and len(known) == lab.shape[1] else tuple(f"label_{j}" for j in range(lab.shape[1]))
    else:
        n_classes = int(lab.max()) + 1
        kind = "binary" if n_classes <= 2 else "multiclass"
        names = (
            known
            if known and len(known) == max(n_classes, 2)
            else tuple(f"class_{j}" for j in range(max(n_classes, 2)))
        )
    idx = np.concatenate(index).astype(np.int64)
    source = ArrayImageSource(
        str(path), tuple(f"{s}_images" for s in splits_found), tuple(arrays), idx, file_sha256(path)
    )
    return {
        "ids": np.array([f"{splits_found[k]}/{j}" for k, j in idx.tolist()]),
        "source": source,
        "labels": lab,
        "label_kind": kind,
        "label_names": names,
        "splits": np.array(splits),
        "patient_ids": None,
        "root": str(path.parent),
    }
