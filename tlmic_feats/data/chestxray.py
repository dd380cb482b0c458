"""Readers for the public chest X-ray datasets: CheXpert and NIH ChestX-ray14.

CheXpert (``--format chexpert``): ``train.csv`` / ``valid.csv`` with ``Path``, ``Sex``, ``Age``,
``Frontal/Lateral``, ``AP/PA`` and 14 findings valued 1, 0, -1 (uncertain) or blank. The official
``valid.csv`` becomes the test split (CheXpert's test labels are not public) and validation is
carved from ``train.csv``, grouped by patient. Uncertain labels follow ``uncertain``: ``ones``
(U-Ones), ``zeros`` (U-Zeros) or ``ignore`` (masked, NaN); blanks follow ``blank``: ``zeros`` or
``missing``. ``views="frontal"`` keeps frontal images only. Patient ids come from the path
(``patientNNNNN``).

NIH ChestX-ray14 (``--format nih``): ``Data_Entry_2017*.csv`` (``Image Index``, ``Finding Labels``
separated by ``|``, ``No Finding``, ``Patient ID``, ``View Position``); the 14 findings become
multi-label targets; images are found by file name anywhere under the dataset folder; the
official ``train_val_list.txt`` / ``test_list.txt`` split is used when present.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from ..runtime.errors import DataFormatError, MissingColumnError, check_choice, choices
from .manifest import FileImageSource

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


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    return header, rows


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
    folder = given if given.is_dir() else given.parent
    files = [("train", folder / "train.csv"), ("test", folder / "valid.csv")]
    files = [(s, f) for s, f in files if f.is_file()]
    if given.is_file():
        files = [("train" if given.name != "valid.csv" else "test", given)]
    if not files:
        raise DataFormatError(f"no CheXpert train.csv or valid.csv in {folder}")
    ids, paths, labels, splits, patients = [], [], [], [], []
    uncertain = dict.fromkeys(CHEXPERT_LABELS, 0)
    blanks = dict.fromkeys(CHEXPERT_LABELS, 0)
    u_value = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[config.uncertain]
    b_value = {"zeros": 0.0, "missing": np.nan}[config.blank]
    for split, csv_path in files:
        header, rows = _read_rows(csv_path)
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
            row = []
            for name in CHEXPERT_LABELS:
                v = r[name]
                if v == "":
                    blanks[name] += 1
                    row.append(b_value)
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
            labels.append(row)
            splits.append(split)
    if not ids:
        raise DataFormatError(f"no images left in {folder} after --views {config.views}")
    return {
        "ids": np.array(ids),
        "source": FileImageSource(tuple(paths), str(folder.parent)),
        "labels": np.array(labels, dtype=np.float32),
        "label_kind": "multilabel",
        "label_names": CHEXPERT_LABELS,
        "splits": None if set(splits) == {"train"} else np.array(splits),  # val is carved from train
        "patient_ids": np.array(patients),
        "root": str(folder),
        "meta": {
            "uncertain": uncertain,
            "blank": blanks,
            "policy": {"uncertain": config.uncertain, "blank": config.blank, "views": config.views},
        },
    }


def read_nih(config) -> dict:
    given = Path(config.path).resolve()
    folder = given if given.is_dir() else given.parent
    entries = [given] if given.is_file() else sorted(folder.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise DataFormatError(f"no Data_Entry_2017*.csv in {folder}")
    header, rows = _read_rows(entries[0])
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
    return {
        "ids": np.array(ids),
        "source": FileImageSource(tuple(paths), str(folder)),
        "labels": np.array(labels, dtype=np.float32),
        "label_kind": "multilabel",
        "label_names": NIH_LABELS,
        "splits": np.array(splits) if has_official else None,
        "patient_ids": np.array(patients),
        "root": str(folder),
        "meta": {"images_listed_but_absent": len(absent), "official_split": has_official},
    }
