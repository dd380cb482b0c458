"""Fuzz targets for the manifest readers and image decoders (hypothesis strategies + checks).

Used by ``tests/test_fuzz.py`` (a few hundred cases in CI) and ``benchmarks/fuzz.py`` (>= 10,000).
Every case must end in a documented outcome: a decoded 8-bit image or manifest whose labels are
exactly the intended ones, or a tlmic error (``BadImageError`` for images, ``DataFormatError`` /
``UsageError`` for manifests). Anything else -- another exception, a wrong label, a path outside
the root accepted, a split that moves with the label policy -- fails the case.

Targets: images (decoders), CSV manifests, MedMNIST ``.npz`` files, and the chest X-ray label files
(CheXpert ``train.csv`` / ``valid.csv``, NIH ``Data_Entry_2017*.csv``): header-only and empty files,
junk values, missing columns, a byte-order mark, the dataset given directly or as the folder one
level above it.
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from tlmic_feats.data import DataConfig, load_manifest
from tlmic_feats.data.chestxray import CHEXPERT_LABELS, NIH_LABELS
from tlmic_feats.data.images import open_image, resize_center_crop
from tlmic_feats.runtime.errors import BadImageError, UsageError

IMAGE_KINDS = (
    "png_L", "png_I16", "png_RGB", "png_RGBA", "png_P", "png_LA", "jpeg_L", "jpeg_CMYK", "truncated_png",
    "truncated_jpeg", "zero_bytes", "random_bytes", "bomb_header", "absurd_dims", "bmp", "tiff_I16",
)  # fmt: skip


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@st.composite
def image_cases(draw):
    """(kind, file bytes, suffix, expected size or None when an error is the right outcome)."""
    from PIL import Image

    kind = draw(st.sampled_from(IMAGE_KINDS))
    w = draw(st.integers(1, 64))
    h = draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    if kind in ("zero_bytes", "random_bytes", "bomb_header", "absurd_dims"):
        data = {
            "zero_bytes": b"",
            "random_bytes": rng.bytes(draw(st.integers(1, 2048))),
            "bomb_header": _png_header_only(draw(st.integers(20_000, 60_000)), draw(st.integers(20_000, 60_000))),
            "absurd_dims": _png_header_only(
                draw(st.sampled_from([0, 1, 2**31 - 1])), draw(st.sampled_from([0, 2**31 - 1]))
            ),
        }[kind]
        return kind, data, draw(st.sampled_from([".png", ".jpg", ".jpeg", ".tif"])), None
    mode = {
        "png_L": "L",
        "png_I16": "I;16",
        "png_RGB": "RGB",
        "png_RGBA": "RGBA",
        "png_P": "P",
        "png_LA": "LA",
        "jpeg_L": "L",
        "jpeg_CMYK": "CMYK",
        "truncated_png": "L",
        "truncated_jpeg": "L",
        "bmp": "L",
        "tiff_I16": "I;16",
    }[kind]
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode in ("L", "P"):
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        if mode == "P":
            im = im.convert("P")
    else:
        channels = {"RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4}[mode]
        im = Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), mode=mode)
    fmt, suffix = (
        ("JPEG", ".jpg")
        if kind.startswith(("jpeg", "truncated_jpeg"))
        else (("BMP", ".bmp") if kind == "bmp" else ("TIFF", ".tif") if kind == "tiff_I16" else ("PNG", ".png"))
    )
    im.save(buf, format=fmt)
    data = buf.getvalue()
    if kind.startswith("truncated"):
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        return kind, data, suffix, None  # may decode (PIL tolerates some) or fail: both documented
    return kind, data, suffix, (w, h)


def check_image_case(case, folder: Path) -> str:
    """Run one image case; returns "decoded" or "refused"; raises AssertionError on a bad outcome."""
    kind, data, suffix, size = case
    path = folder / f"case{suffix}"
    path.write_bytes(data)
    try:
        im = open_image(str(path))
    except BadImageError as e:
        assert size is None, f"{kind}: a valid image was refused: {e}"
        assert str(path) in str(e)
        return "refused"
    assert im.mode == "L", (kind, im.mode)
    if size is not None:
        assert im.size == size, (kind, im.size, size)
    elif kind not in ("truncated_png", "truncated_jpeg"):
        raise AssertionError(f"{kind}: decoded although it is not a valid image ({im.size})")
    out = resize_center_crop(im, resize_size=32, input_size=28)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    return "decoded"


@st.composite
def csv_cases(draw):
    """A CSV manifest with its intended labels: names with commas and quotes, BOM, junk values,
    duplicate paths and paths escaping the root among the rows."""
    n = draw(st.integers(1, 12))
    names = []
    for i in range(n):
        base = draw(st.sampled_from(["img", "a,b", 'q"uote', "späce x", "x"]))
        names.append(f"{base}_{i}.png")
    bad_path = draw(st.sampled_from([None, None, None, "../outside.png", "/etc/passwd", "sub/../../up.png"]))
    dup = draw(st.integers(0, 3)) == 0 and n > 1
    pool = ["0", "1", "1.0", "0.0", " 1 "] + (["", "2", "yes", "nan"] if draw(st.booleans()) else [])
    values = [draw(st.sampled_from(pool)) for _ in range(n)]
    multi = draw(st.booleans())
    second = [draw(st.sampled_from(["0", "1", ""])) for _ in range(n)]
    bom = draw(st.booleans())
    shape = draw(st.sampled_from(["rows"] * 8 + ["header only", "empty"]))
    return names, bad_path, dup, values, multi, second, bom, shape


def check_csv_case(case, folder: Path) -> str:
    from PIL import Image

    names, bad_path, dup, values, multi, second, bom, shape = case
    for name in names:
        Image.new("L", (8, 8)).save(folder / name)
    rows = [[name, v] + ([s] if multi else []) for name, v, s in zip(names, values, second, strict=True)]
    if bad_path is not None:
        rows.append([bad_path, "0"] + (["0"] if multi else []))
    if dup:
        rows.append(list(rows[0]))
    header = ["path", "finding"] + (["other"] if multi else [])
    text = io.StringIO()
    csv.writer(text).writerows({"rows": [header, *rows], "header only": [header], "empty": []}[shape])
    (folder / "m.csv").write_text(("\ufeff" if bom else "") + text.getvalue(), encoding="utf-8")
    try:
        m = load_manifest(DataConfig(str(folder / "m.csv")))
    except UsageError:
        return "refused"
    assert shape == "rows", f"a {shape} CSV was accepted"
    assert bad_path is None, f"path {bad_path!r} outside the root was accepted"
    assert not dup, "duplicate ids were accepted"
    got = {i: m.labels[k] for k, i in enumerate(m.ids)}
    for name, v, s in zip(names, values, second, strict=True):
        if multi:
            want = [float(v) if v.strip() else np.nan, float(s) if s else np.nan]
            np.testing.assert_array_equal(got[name], np.array(want, dtype=np.float32))
        else:
            classes = list(m.label_names)
            # the label's class name, whatever index it got, is the value written (numbers as numbers)
            label_name = classes[int(got[name][0])]
            written = v.strip()
            try:
                x = float(written)
                written = str(int(x)) if np.isfinite(x) and x == int(x) else written
            except ValueError:
                pass
            if classes == ["not finding", "finding"]:
                assert label_name == ("finding" if written == "1" else "not finding"), (v, label_name)
            else:
                assert label_name == written, (v, label_name)
    return "loaded"


@st.composite
def npz_cases(draw):
    n = draw(st.integers(2, 6))
    poison = draw(st.sampled_from(["none", "nan_image", "inf_image", "nan_label", "inf_label", "no_rows", "not_a_zip"]))
    return n, poison


REFUSED_NPZ = ("nan_label", "inf_label", "no_rows", "not_a_zip")


def check_npz_case(case, folder: Path) -> str:
    n, poison = case
    if poison == "no_rows":
        n = 0
    img = np.random.default_rng(n).random((n, 8, 8)) * 255
    lab = (np.arange(n) % 2).reshape(n, 1).astype(np.float64)
    if poison == "nan_image":
        img[0, 0, 0] = np.nan
    if poison == "inf_image":
        img[-1, 3, 3] = np.inf
    if poison == "nan_label":
        lab[0, 0] = np.nan
    if poison == "inf_label":
        lab[-1, 0] = np.inf
    np.savez(folder / "d.npz", train_images=img, train_labels=lab, val_images=img, val_labels=lab)
    if poison == "not_a_zip":
        (folder / "d.npz").write_bytes((folder / "d.npz").read_bytes()[64:])
    try:
        m = load_manifest(DataConfig(str(folder / "d.npz")))
    except UsageError:
        assert poison in REFUSED_NPZ, poison
        return "refused"
    assert poison not in REFUSED_NPZ, f"{poison} accepted"
    outcomes = []
    for i in range(len(m)):
        try:
            m.source.load(i)
            outcomes.append("ok")
        except BadImageError:
            outcomes.append("bad")
    if poison == "none":
        assert "bad" not in outcomes
    else:
        assert "bad" in outcomes, f"{poison} decoded silently"
    return "loaded"


CHEXPERT_VALUES = ("1.0", "0.0", "-1.0", "", "1", "0", "-1", " 1.0 ")
CHEXPERT_JUNK = ("2", "x", "nan", "-1.5")


@st.composite
def chest_cases(draw):
    """A CheXpert or NIH label folder: rows, header only, empty, a missing column or a junk value; a
    byte-order mark; the dataset folder given directly or the folder above it; CheXpert with or
    without valid.csv, under any --uncertain / --blank policy."""
    fmt = draw(st.sampled_from(["chexpert", "nih"]))
    shape = draw(st.sampled_from(["rows"] * 6 + ["header only", "empty", "missing column", "junk value"]))
    n_patients = draw(st.integers(1, 8))
    rows = []
    for p in range(n_patients):
        for k in range(draw(st.integers(1, 3))):
            if fmt == "chexpert":
                view = draw(st.sampled_from(["Frontal", "Frontal", "Lateral"]))
                rows.append((p, k, view, [draw(st.sampled_from(CHEXPERT_VALUES)) for _ in CHEXPERT_LABELS]))
            else:
                findings = draw(st.lists(st.sampled_from(NIH_LABELS), max_size=3, unique=True))
                rows.append((p, k, "PA", findings))
    return {
        "fmt": fmt,
        "shape": shape,
        "rows": rows,
        "nested": draw(st.booleans()),
        "bom": draw(st.booleans()),
        "valid": fmt == "chexpert" and draw(st.booleans()),
        "official": fmt == "nih" and draw(st.booleans()),
        "uncertain": draw(st.sampled_from(["ones", "zeros", "ignore"])),
        "blank": draw(st.sampled_from(["zeros", "missing"])),
        "junk_at": draw(st.integers(0, 10_000)),
    }


def _write_label_file(path: Path, header: list[str], rows: list[list], shape: str, bom: bool) -> None:
    text = io.StringIO()
    if shape != "empty":
        csv.writer(text).writerows([header, *(rows if shape != "header only" else [])])
    path.write_text(("\ufeff" if bom and shape != "empty" else "") + text.getvalue(), encoding="utf-8")


def check_chest_case(case, folder: Path) -> str:
    """Write the case, read it with --format auto; the outcome must be the intended labels (and a
    split that the label policy does not move) or a one-line tlmic error."""
    fmt, shape, rows = case["fmt"], case["shape"], case["rows"]
    data = folder / ("CheXpert-v1.0-small" if fmt == "chexpert" else "nih")
    data.mkdir()
    expected: dict[str, list[float]] = {}
    if fmt == "chexpert":
        header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
        table = []
        for p, k, view, values in rows:
            rel = f"{data.name}/train/patient{p:05d}/study{k + 1}/view1_{view.lower()}.jpg"
            table.append([rel, "F", "60", view, "AP", *values])
            if view == "Frontal":
                u = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[case["uncertain"]]
                b = {"zeros": 0.0, "missing": np.nan}[case["blank"]]
                expected[rel] = [
                    b if v.strip() == "" else u if float(v) == -1 else float(v) for v in values
                ]  # fmt: skip
        if case["valid"]:
            test_rel = f"{data.name}/valid/patient64541/study1/view1_frontal.jpg"
            with open(data / "valid.csv", "w", newline="") as f:
                csv.writer(f).writerows(
                    [header, [test_rel, "M", "50", "Frontal", "PA", *["1.0"] * len(CHEXPERT_LABELS)]]
                )
            expected[test_rel] = [1.0] * len(CHEXPERT_LABELS)
        name = "train.csv"
    else:
        header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"]
        table = []
        for p, k, _, findings in rows:
            image = f"{p:08d}_{k:03d}.png"
            (data / image).touch()  # found by name; the reader does not decode images
            table.append([image, "|".join(findings) or "No Finding", k, p, "PA"])
            expected[image] = [float(n in findings) for n in NIH_LABELS]
        if case["official"]:
            names = [r[0] for r in table]
            (data / "train_val_list.txt").write_text("\n".join(names[: max(1, len(names) - 2)]) + "\n")
            (data / "test_list.txt").write_text("\n".join(names[max(1, len(names) - 2) :]) + "\n")
        name = "Data_Entry_2017_v2020.csv"
    if shape == "missing column":
        drop = header.index("Frontal/Lateral" if fmt == "chexpert" else "Finding Labels")
        header = header[:drop] + header[drop + 1 :]
        table = [r[:drop] + r[drop + 1 :] for r in table]
    if shape == "junk value" and table:
        # on a row the reader reads: lateral rows are skipped (--views frontal) before their values are
        read = [r for r in table if fmt == "nih" or r[3] == "Frontal"] or table
        r = read[case["junk_at"] % len(read)]
        if fmt == "chexpert":
            r[5 + case["junk_at"] % len(CHEXPERT_LABELS)] = CHEXPERT_JUNK[case["junk_at"] % len(CHEXPERT_JUNK)]
        else:
            r[1] = "Nodule|Unicorn"
    _write_label_file(data / name, header, table, shape, case["bom"])
    given = folder if case["nested"] else data
    config = DataConfig(str(given), uncertain=case["uncertain"], blank=case["blank"])
    try:
        m = load_manifest(config)
    except UsageError as e:
        assert "\n" not in str(e), f"a multi-line error: {e}"
        trainable = fmt == "nih" or any(view == "Frontal" for *_, view, _ in rows)
        assert shape != "rows" or not trainable, f"a valid {fmt} folder was refused: {e}"
        return "refused"
    assert shape == "rows", f"a {shape} label file was accepted"
    assert m.format == fmt, (m.format, fmt)
    assert sorted(m.ids.tolist()) == sorted(expected), "the images read are not the images written"
    for i, image in enumerate(m.ids):
        np.testing.assert_array_equal(m.labels[i], np.array(expected[image], dtype=np.float32), err_msg=image)
    if fmt == "chexpert":  # every policy sees the same split
        other = load_manifest(DataConfig(str(given), uncertain="ones", blank="missing"))
        np.testing.assert_array_equal(other.splits, m.splits)
    return "loaded"
