"""Readers for the public chest X-ray datasets: CheXpert and NIH ChestX-ray14.

CheXpert (``--format chexpert``): ``train.csv`` / ``valid.csv`` with ``Path``, ``Sex``, ``Age``,
``Frontal/Lateral``, ``AP/PA`` and 14 findings valued 1, 0, -1 (uncertain) or blank. The official
``valid.csv`` becomes the test split (CheXpert's test labels are not public) and validation is
carved from ``train.csv``, grouped by patient; without ``valid.csv`` the test split is carved
from ``train.csv`` too (and said so). Uncertain labels follow ``uncertain``: ``ones`` (U-Ones),
``zeros`` (U-Zeros) or ``ignore`` (masked, NaN); blanks follow ``blank``: ``zeros`` or
``missing``. The split is stratified on the U-Zeros labels whatever the policies, so that every
policy sees the same train/val/test images. ``views="frontal"`` keeps frontal images only.
Patient ids come from the path (``patientNNNNN``).

NIH ChestX-ray14 (``--format nih``): ``Data_Entry_2017*.csv`` (``Image Index``, ``Finding Labels``
separated by ``|``, ``No Finding``, ``Patient ID``, ``View Position``); the 14 findings become
multi-label targets; images are found by file name anywhere under the dataset folder; the
official ``train_val_list.txt`` / ``test_list.txt`` split is used when present (without it, the
test split is carved by patient, and said so).

Either dataset's folder may be given, or the folder holding it (found one level down, as the
official zips unpack). Empty and header-only label files are one-line errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..runtime.errors import DataFormatError, MissingColumnError, check_choice, choices
from .manifest import FileImageSource
from .tables import read_label_table

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)  # fmt: skip
NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
BLANK_POLICIES = ("zeros", "missing")
VIEWS = ("frontal", "all")


def _is_chexpert_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return "Frontal/Lateral" in f.readline()
    except OSError:
        return False


def chest_layout(folder: Path) -> tuple[str, Path] | None:
    """``("nih" | "chexpert", the dataset folder)`` when ``folder`` holds an NIH ChestX-ray14 folder
    (``Data_Entry_2017*.csv``) or a CheXpert one (``train.csv`` / ``valid.csv`` with a
    ``Frontal/Lateral`` column), itself or one level down (the official zips unpack into
    ``CheXpert-v1.0-small/``); None otherwise. Two candidates one level down are an error."""

    def here(d: Path) -> str | None:
        if any(d.glob("Data_Entry_2017*.csv")):
            return "nih"
        if any(_is_chexpert_csv(d / name) for name in ("train.csv", "valid.csv")):
            return "chexpert"
        return None

    if (fmt := here(folder)) is not None:
        return fmt, folder
    below = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (fmt := here(d)) is not None:
            below.append((fmt, d))
    if len(below) > 1:
        names = ", ".join(f"{d.name}/ ({fmt})" for fmt, d in below)
        raise DataFormatError(f"{folder} holds several chest X-ray datasets one level down: {names}; pass one of them")
    return below[0] if below else None


def _dataset_folder(given: Path, fmt: str, looked_for: str) -> Path:
    """The folder of a ``fmt`` dataset named by ``given`` (the folder, or the one above it)."""
    if not given.exists():
        raise DataFormatError(f"dataset path does not exist: {given}")
    names = ("train.csv", "valid.csv") if fmt == "chexpert" else ()
    if any((given / n).is_file() for n in names) or (fmt == "nih" and any(given.glob("Data_Entry_2017*.csv"))):
        return given  # its files are read (and their columns checked) even without the telltale header
    found = chest_layout(given)
    if found is not None and found[0] == fmt:
        return found[1]
    other = f" (it looks like {found[0].upper()} data: --format {found[0]})" if found else ""
    raise DataFormatError(f"no {looked_for} in {given} or one level below it{other}")


def _confined(root: Path, rel: str, where: str, allow_outside: bool) -> str:
    p = (root / rel).resolve()
    if not allow_outside and not p.is_relative_to(root):
        raise DataFormatError(f"{where}: path {rel!r} leaves the data root {root} (pass --allow-outside-root)")
    return str(p)


def read_chexpert(config) -> dict:
    check_choice("--uncertain", config.uncertain, UNCERTAIN_POLICIES)
    check_choice("--blank", config.blank, BLANK_POLICIES)
    check_choice("--views", config.views, VIEWS)
    given = Path(config.path).resolve()
    if given.is_file():
        folder, files = given.parent, [("train" if given.name != "valid.csv" else "test", given)]
    else:
        folder = _dataset_folder(given, "chexpert", "CheXpert train.csv or valid.csv (with a Frontal/Lateral column)")
        files = [(s, f) for s, f in (("train", folder / "train.csv"), ("test", folder / "valid.csv")) if f.is_file()]
    ids, paths, labels, strata, splits, patients = [], [], [], [], [], []
    uncertain = dict.fromkeys(CHEXPERT_LABELS, 0)
    blanks = dict.fromkeys(CHEXPERT_LABELS, 0)
    u_value = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[config.uncertain]
    b_value = {"zeros": 0.0, "missing": np.nan}[config.blank]
    for split, csv_path in files:
        header, rows = read_label_table(csv_path)
        missing = [c for c in ("Path", "Frontal/Lateral", *CHEXPERT_LABELS) if c not in header]
        if missing:
            raise MissingColumnError(
                f"{csv_path.name} lacks CheXpert column(s) {choices(missing)}; columns: {choices(header)}"
            )
        for i, r in enumerate(rows):
            if config.views == "frontal" and r["Frontal/Lateral"].lower() != "frontal":
                continue
            rel = r["Path"]
            first = rel.split("/", 1)[0]
            root = folder.parent if first == folder.name else folder  # paths start with the dataset folder
            paths.append(_confined(root, rel, f"{csv_path.name} row {i + 2}", config.allow_outside_root))
            ids.append(rel)
            m = re.search(r"patient(\d+)", rel)
            if not m:
                raise DataFormatError(f"{csv_path.name} row {i + 2}: no patientNNNNN in path {rel!r}")
            patients.append(m.group(1))
            row, certain = [], []
            for name in CHEXPERT_LABELS:
                v = r[name]
                if v == "":
                    blanks[name] += 1
                    row.append(b_value)
                    certain.append(0.0)
                    continue
                try:
                    x = float(v)
                except ValueError:
                    x = None
                if x not in (1.0, 0.0, -1.0):
                    raise DataFormatError(f"{csv_path.name} row {i + 2}: {name} is {v!r}; valid: 1, 0, -1 or blank")
                if x == -1.0:
                    uncertain[name] += 1
                    row.append(u_value)
                else:
                    row.append(x)
                certain.append(max(x, 0.0))
            labels.append(row)
            strata.append(certain)
            splits.append(split)
    if not ids:
        raise DataFormatError(f"no images left in {folder} after --views {config.views}")
    meta = {
        "uncertain": uncertain,
        "blank": blanks,
        "policy": {"uncertain": config.uncertain, "blank": config.blank, "views": config.views},
    }
    if "test" not in splits:
        meta["split_note"] = (
            "no valid.csv: test carved from train by patient"
            if not any(split == "test" for split, _ in files)
            else f"valid.csv has no {config.views} images: test carved from train by patient"
        )
    return {
        "ids": np.array(ids),
        "source": FileImageSource(tuple(paths), str(folder.parent)),
        "labels": np.array(labels, dtype=np.float32),
        # The split is stratified on the U-Zeros labels (blank and uncertain as 0), which no policy
        # changes: --uncertain and --blank change what a model learns, never which images it sees.
        "split_labels": np.array(strata, dtype=np.float32),
        "label_kind": "multilabel",
        "label_names": CHEXPERT_LABELS,
        "splits": None if set(splits) == {"train"} else np.array(splits),  # val is carved from train
        "patient_ids": np.array(patients),
        "root": str(folder),
        "meta": meta,
    }


def read_nih(config) -> dict:
    given = Path(config.path).resolve()
    if given.is_file():
        folder, entries = given.parent, [given]
    else:
        folder = _dataset_folder(given, "nih", "NIH Data_Entry_2017*.csv")
        entries = sorted(folder.glob("Data_Entry_2017*.csv"))
    header, rows = read_label_table(entries[0])
    need = ("Image Index", "Finding Labels", "Patient ID")
    missing = [c for c in need if c not in header]
    if missing:
        raise MissingColumnError(
            f"{entries[0].name} lacks NIH column(s) {choices(missing)}; columns: {choices(header)}"
        )
    index: dict[str, str] = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f.lower().endswith(".png"):
                index.setdefault(f, os.path.join(dirpath, f))
    official = {}
    for split, name in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        f = folder / name
        if f.is_file():
            for line in f.read_text().split():
                official[line.strip()] = split
    ids, paths, labels, patients, splits, absent = [], [], [], [], [], []
    known = {n: j for j, n in enumerate(NIH_LABELS)}
    for i, r in enumerate(rows):
        name = r["Image Index"]
        if name not in index:
            absent.append(name)
            continue
        findings = [x.strip() for x in r["Finding Labels"].split("|") if x.strip()]
        y = np.zeros(len(NIH_LABELS), np.float32)
        for x in findings:
            if x == "No Finding":
                continue
            if x not in known:
                raise DataFormatError(
                    f"{entries[0].name} row {i + 2}: unknown finding {x!r}; valid: {choices(NIH_LABELS)}"
                )
            y[known[x]] = 1
        if "No Finding" in findings and len(findings) > 1:
            raise DataFormatError(f"{entries[0].name} row {i + 2}: 'No Finding' together with findings {findings}")
        ids.append(name)
        paths.append(index[name])
        labels.append(y)
        patients.append(r["Patient ID"])
        splits.append(official.get(name, ""))
    if absent and not ids:
        raise DataFormatError(f"none of the {len(absent)} images in {entries[0].name} was found under {folder}")
    has_official = bool(official) and all(s for s in splits)
    meta = {"images_listed_but_absent": len(absent), "official_split": has_official}
    if not official:
        meta["split_note"] = "no train_val_list.txt / test_list.txt: test carved from the data by patient"
    elif not has_official:
        meta["split_note"] = "the official lists miss some images: test carved from the data by patient"
    return {
        "ids": np.array(ids),
        "source": FileImageSource(tuple(paths), str(folder)),
        "labels": np.array(labels, dtype=np.float32),
        "label_kind": "multilabel",
        "label_names": NIH_LABELS,
        "splits": np.array(splits) if has_official else None,
        "patient_ids": np.array(patients),
        "root": str(folder),
        "meta": meta,
    }
