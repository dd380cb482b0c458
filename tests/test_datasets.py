"""Public chest X-ray dataset formats (fixtures follow the real files' columns and conventions)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from tlmic_cli.main import cli

from tlmic_feats.data import DataConfig, load_manifest, patients_straddling
from tlmic_feats.data.chestxray import CHEXPERT_LABELS, NIH_LABELS
from tlmic_feats.runtime.errors import DataFormatError, MissingColumnError
from tlmic_feats.testing.datasets import write_images


@pytest.fixture
def chexpert(tmp_path):
    """CheXpert-v1.0-small/{train,valid}.csv with Path relative to the folder's parent."""
    root = tmp_path / "CheXpert-v1.0-small"
    rng = np.random.default_rng(0)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
    for split, n_pat in (("train", 12), ("valid", 3)):
        rows = []
        for p in range(n_pat):
            pid = f"patient{p + (0 if split == 'train' else 64000):05d}"
            for view, fl in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
                rel = f"CheXpert-v1.0-small/{split}/{pid}/study1/{view}.jpg"
                folder = tmp_path / rel.rsplit("/", 1)[0]
                folder.mkdir(parents=True, exist_ok=True)
                write_images(folder, 1, seed=p, size=(40, 48))[0].rename(tmp_path / rel)
                values = [rng.choice(["1.0", "0.0", "-1.0", ""]) for _ in CHEXPERT_LABELS]
                rows.append([rel, "Female", "60", fl, "AP" if fl == "Frontal" else "", *values])
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    return root


def test_chexpert_policies_views_and_patients(chexpert):
    m = load_manifest(DataConfig(str(chexpert)))
    assert m.format == "chexpert" and m.label_names == CHEXPERT_LABELS and m.label_kind == "multilabel"
    assert len(m) == 15 and all("frontal" in i for i in m.ids)  # frontal only by default
    assert set(m.splits) == {"train", "val", "test"} and (m.splits == "test").sum() == 3
    assert patients_straddling(m.splits, m.patient_ids) == []
    assert m.patient_ids[0] == "00000"
    raw = {}
    with open(chexpert / "train.csv") as f:
        for r in csv.DictReader(f):
            raw[r["Path"]] = r
    ones = load_manifest(DataConfig(str(chexpert), uncertain="ones", blank="missing", views="all"))
    zeros = load_manifest(DataConfig(str(chexpert), uncertain="zeros"))
    assert len(ones) == 30
    for mm, u, b in ((m, np.nan, 0.0), (ones, 1.0, np.nan), (zeros, 0.0, 0.0)):
        for i, pid in enumerate(mm.ids):
            if pid not in raw:
                continue
            for j, name in enumerate(CHEXPERT_LABELS):
                v = raw[pid][name]
                want = {"1.0": 1.0, "0.0": 0.0, "-1.0": u, "": b}[v]
                got = mm.labels[i, j]
                assert (np.isnan(want) and np.isnan(got)) or got == want, (pid, name, v)
    assert sum(m.meta["uncertain"].values()) > 0


def test_chexpert_bad_value_and_missing_column(chexpert):
    text = (chexpert / "train.csv").read_text().splitlines()
    cells = next(csv.reader([text[1]]))
    cells[5] = "2.0"
    (chexpert / "train.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"train.csv row 2: No Finding is '2.0'; valid: 1, 0, -1 or blank"):
        load_manifest(DataConfig(str(chexpert), format="chexpert"))
    (chexpert / "valid.csv").write_text("Path,Sex\nx.jpg,F\n")
    (chexpert / "train.csv").unlink()
    with pytest.raises(MissingColumnError, match="lacks CheXpert column"):
        load_manifest(DataConfig(str(chexpert), format="chexpert"))


@pytest.fixture
def nih(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "nih"
    rows, train_val, test = [], [], []
    for p in range(20):
        for k in range(2):
            name = f"{p:08d}_{k:03d}.png"
            sub = root / f"images_{1 + p % 2:03d}" / "images"
            sub.mkdir(parents=True, exist_ok=True)
            write_images(sub, 1, seed=p * 2 + k, size=(40, 40))[0].rename(sub / name)
            chosen = [n for n in NIH_LABELS if rng.random() < 0.15]
            rows.append([name, "|".join(chosen) or "No Finding", k, p, 50, "M", "PA", 2500, 2048, 0.14, 0.14])
            (test if p >= 16 else train_val).append(name)
    header = [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
    ]
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root, rows


def test_nih_labels_and_official_split(nih):
    root, rows = nih
    m = load_manifest(DataConfig(str(root)))
    assert m.format == "nih" and m.label_names == NIH_LABELS and len(m) == 40
    by_id = {r[0]: r[1] for r in rows}
    for i, name in enumerate(m.ids):
        want = set(by_id[name].split("|")) - {"No Finding"}
        assert {NIH_LABELS[j] for j in np.flatnonzero(m.labels[i])} == want
    assert (m.splits == "test").sum() == 8 and m.meta["official_split"]
    assert patients_straddling(m.splits, m.patient_ids) == []  # val carved from train_val by patient


def test_kermany_patient_regex_keeps_person1946_together(kermany_dir):
    m = load_manifest(DataConfig(str(kermany_dir), patient_regex=r"(person\d+)_|(IM-\d+)-"))
    rows = [i for i, x in enumerate(m.ids) if "person1946_" in x]
    assert len(rows) == 2 and m.patient_ids[rows[0]] == m.patient_ids[rows[1]] == "person1946"
    assert m.splits[rows[0]] == m.splits[rows[1]]
    assert len(np.unique(m.patient_ids)) == 15


def test_data_check_cli(nih, kermany_dir):
    root, _ = nih
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(root)])
    assert r.exit_code == 0, r.output + r.stderr
    assert "images: 40; patients: 20" in r.output and "patients in more than one split: none" in r.output
    assert "Pleural_Thickening" in r.output and "unreadable images: 0" in r.output
    bad = root / "images_001" / "images" / "00000000_000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(root)])
    assert "unreadable images: 1" in r.output and "00000000_000.png" in r.output
    r = CliRunner().invoke(
        cli, ["data", "check", "--data", str(kermany_dir), "--patient-regex", r"(person\d+)_|(IM-\d+)-"]
    )
    assert r.exit_code == 0 and "images: 16; patients: 15" in r.output


DICOM = __import__("tests.conftest", fromlist=["SHARED_DATA"]).SHARED_DATA / "dicom"


@pytest.fixture
def dicom_dir():
    if not (DICOM / "RG1_UNCR.dcm").is_file():
        pytest.skip(f"shared DICOM files not present at {DICOM}")
    return DICOM


def test_monochrome1_chest_cr_loads_inverted(dicom_dir):
    from tlmic_feats.data.images import open_image

    im = np.asarray(open_image(str(dicom_dir / "RG1_UNCR.dcm")))
    h, w = im.shape
    assert (h, w) == (1955, 1841) and im.dtype == np.uint8
    mediastinum = im[h // 3 : 2 * h // 3, w // 2 - w // 20 : w // 2 + w // 20].mean()
    lungs = np.mean(
        [
            im[h // 3 : 2 * h // 3, int(w * 0.2) : int(w * 0.35)].mean(),
            im[h // 3 : 2 * h // 3, int(w * 0.65) : int(w * 0.8)].mean(),
        ]
    )
    assert mediastinum > lungs + 30  # lungs dark, mediastinum bright: MONOCHROME1 was inverted
    corner = im[: h // 20, : w // 20].mean()  # outside the body (collimated) differs from lungs
    assert abs(corner - lungs) > 10


def test_jpeg2000_dicom_decodes_to_the_same_pixels(dicom_dir):
    pytest.importorskip("pylibjpeg")
    pytest.importorskip("openjpeg")
    from tlmic_feats.data.images import open_image

    a = np.asarray(open_image(str(dicom_dir / "RG1_UNCR.dcm")))
    b = np.asarray(open_image(str(dicom_dir / "RG1_J2KR.dcm")))
    np.testing.assert_array_equal(a, b)


def test_dicom_folder_goes_through_the_reader(dicom_dir, tmp_path):
    import shutil

    for cls in ("normal", "abnormal"):
        (tmp_path / cls).mkdir()
        shutil.copy(dicom_dir / "RG1_UNCR.dcm", tmp_path / cls / f"{cls}.dcm")
    m = load_manifest(DataConfig(str(tmp_path), format="dicom"))
    assert len(m) == 2 and m.label_names == ("normal", "abnormal")
    assert np.asarray(m.source.load(0)).shape == (1955, 1841)


def test_multiframe_dicom_is_refused_with_a_clear_message(dicom_dir, tmp_path):
    import pydicom

    from tlmic_feats.data.dicom import read_dicom
    from tlmic_feats.runtime.errors import BadImageError

    ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm")
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "two.dcm")
    with pytest.raises(BadImageError, match="has 2 frames; choose one with --dicom-frame N"):
        read_dicom(str(tmp_path / "two.dcm"))
    np.testing.assert_array_equal(
        np.asarray(read_dicom(str(tmp_path / "two.dcm"), frame=1)),
        np.asarray(read_dicom(str(dicom_dir / "RG1_UNCR.dcm"))),
    )


def test_dicom_frame_option_reaches_the_decoder(dicom_dir, tmp_path):
    import pydicom

    ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm")
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        ds.save_as(tmp_path / cls / "two.dcm")
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(tmp_path), "--format", "dicom"])
    assert "unreadable images: 2" in r.output and "--dicom-frame" in r.output
    r = CliRunner().invoke(
        cli, ["data", "check", "--data", str(tmp_path), "--format", "dicom", "--dicom-frame", "1", "--decode"]
    )
    assert "unreadable images: 0" in r.output, r.output


def test_official_split_that_mixes_patients_is_reported(tmp_path):
    paths = write_images(tmp_path, 6, size=(32, 32))
    rows = [
        [p.name, i % 2, s, pid]
        for i, (p, s, pid) in enumerate(
            zip(paths, ["train", "train", "val", "test", "test", "train"], ["a", "b", "c", "d", "a", "e"], strict=True)
        )
    ]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split", "patient_id"], *rows])
    m = load_manifest(DataConfig(str(tmp_path / "m.csv")))
    assert m.meta["patients_straddling"] == 1 and list(m.splits) == ["train", "train", "val", "test", "test", "train"]
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(tmp_path / "m.csv")])
    assert "PATIENTS IN MORE THAN ONE SPLIT: 1 (e.g. a)" in r.output


def _chexpert_csv(folder, rng, n_patients, split="train", header=True):
    """A CheXpert label file (no images: reading the manifest needs none), many uncertain labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]] if header else []
    for p in range(n_patients):
        for s in range(1 + int(rng.integers(0, 3))):
            values = [rng.choice(["1.0", "0.0", "-1.0", ""], p=[0.12, 0.18, 0.1, 0.6]) for _ in CHEXPERT_LABELS]
            pid = p + (0 if split == "train" else 64541)
            rows.append([f"{folder.name}/{split}/patient{pid:05d}/study{s + 1}/view1_frontal.jpg", "F", "60",
                         "Frontal", "AP", *values])  # fmt: skip
    with open(folder / f"{'train' if split == 'train' else 'valid'}.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("with_valid", [False, True])
def test_chexpert_split_is_the_same_under_every_label_policy(tmp_path, with_valid):
    from tlmic_feats.data.splits import make_splits

    root = tmp_path / "CheXpert-v1.0-small"
    rng = np.random.default_rng(0)
    _chexpert_csv(root, rng, 200)
    if with_valid:
        _chexpert_csv(root, rng, 30, split="valid")
    manifests = {
        (u, b): load_manifest(DataConfig(str(root), uncertain=u, blank=b))
        for u in ("ones", "zeros", "ignore")
        for b in ("zeros", "missing")
    }
    reference = manifests[("ignore", "zeros")]
    for (u, b), m in manifests.items():
        np.testing.assert_array_equal(m.ids, reference.ids)
        np.testing.assert_array_equal(m.splits, reference.splits, err_msg=f"--uncertain {u} --blank {b}")
    assert set(reference.splits) == {"train", "val", "test"}
    assert patients_straddling(reference.splits, reference.patient_ids) == []
    # the data is one where stratifying on the policy's labels would move images (what happened before)
    ones = manifests[("ones", "zeros")]
    existing = np.where(ones.splits == "test", "test", "train") if with_valid else None
    moved = make_splits(ones.labels, "multilabel", patient_ids=ones.patient_ids, existing=existing)
    assert (moved != reference.splits).sum() > 20


def test_chest_datasets_found_one_level_down_and_named_before_class_folders(chexpert, tmp_path):
    direct = load_manifest(DataConfig(str(chexpert)))
    above = load_manifest(DataConfig(str(tmp_path)))  # the folder the official zip unpacks into
    assert above.format == "chexpert" and above.root == direct.root
    np.testing.assert_array_equal(above.ids, direct.ids)
    np.testing.assert_array_equal(above.splits, direct.splits)
    assert load_manifest(DataConfig(str(tmp_path), format="chexpert")).format == "chexpert"
    # CheXpert's train/ folder holds patient folders that look like class folders: auto must not take them
    from tlmic_feats.data import detect_format

    assert detect_format(tmp_path) == detect_format(chexpert) == "chexpert"
    with pytest.raises(DataFormatError, match=r"no NIH Data_Entry_2017\*\.csv in .* \(it looks like CHEXPERT data"):
        load_manifest(DataConfig(str(tmp_path), format="nih"))


def test_nih_found_one_level_down_and_two_datasets_are_ambiguous(nih, tmp_path):
    root, _ = nih
    m = load_manifest(DataConfig(str(tmp_path)))
    assert m.format == "nih" and len(m) == 40 and m.meta["official_split"]
    _chexpert_csv(tmp_path / "CheXpert-v1.0-small", np.random.default_rng(0), 5)
    with pytest.raises(DataFormatError, match=r"several chest X-ray datasets one level down: CheXpert-v1.0-small/"):
        load_manifest(DataConfig(str(tmp_path)))


def test_a_missing_official_test_split_is_reported(chexpert, nih):
    (chexpert / "valid.csv").unlink()
    m = load_manifest(DataConfig(str(chexpert)))
    assert m.split_origin == "no valid.csv: test carved from train by patient (seed=0)"
    assert set(m.splits) == {"train", "val", "test"} and patients_straddling(m.splits, m.patient_ids) == []
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(chexpert)])
    assert r.exit_code == 0 and "note: no valid.csv: test carved from train by patient" in r.output
    root, _ = nih
    (root / "test_list.txt").unlink()
    (root / "train_val_list.txt").unlink()
    m = load_manifest(DataConfig(str(root)))
    assert m.split_origin.startswith("no train_val_list.txt / test_list.txt: test carved from the data by patient")


def test_a_missing_official_test_split_is_reported_by_extract_and_probe(chexpert, tmp_path):
    from tlmic_feats.features.config import ExtractConfig
    from tlmic_feats.features.extract import extract_features
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    (chexpert / "valid.csv").unlink()
    logged = []
    config = ExtractConfig(
        data=DataConfig(str(chexpert), views="all", blank="zeros", uncertain="zeros"),
        backbone="resnet18",
        weights="random:0",
        layers="4",
        input_size=32,
        store=str(tmp_path / "s.zarr"),
        workers=0,
        pixel_cache=False,
    )
    store = extract_features(config, progress=False, log=logged.append).store
    assert "note: no valid.csv: test carved from train by patient" in logged
    logged.clear()
    run = run_probes(
        ProbeConfig(store=str(store.path), models=("logreg",), seeds=1, bootstrap=10, out=str(tmp_path / "r")),
        progress=False,
        log=logged.append,
    )
    assert "note: no valid.csv: test carved from train by patient (seed=0)" in logged
    assert "(split: no valid.csv: test carved from train by patient (seed=0))" in (run.out / "summary.md").read_text()


HEADER_ONLY = {
    "csv": ("m.csv", "path,label\n"),
    "tsv": ("m.tsv", "path\tlabel\n"),
    "chexpert": ("train.csv", "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS) + "\n"),
    "nih": ("Data_Entry_2017_v2020.csv", "Image Index,Finding Labels,Follow-up #,Patient ID\n"),
}


@pytest.mark.parametrize("fmt", sorted(HEADER_ONLY))
@pytest.mark.parametrize("content", ["header only", "empty"])
def test_header_only_and_empty_label_files_end_in_one_line_errors(tmp_path, fmt, content):
    name, header = HEADER_ONLY[fmt]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / name).write_text(header if content == "header only" else "")
    target = folder / name if fmt in ("csv", "tsv") else folder
    want = "holds a header and no rows" if content == "header only" else "is empty|no header|no images found"
    with pytest.raises(DataFormatError, match=want):
        load_manifest(DataConfig(str(target), format={"tsv": "csv"}.get(fmt, fmt) if content == "empty" else "auto"))
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(target)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("tlmic: error:")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"train_images": np.zeros((0, 8, 8), np.uint8), "train_labels": np.zeros((0, 1))}, "holds no images"),
        ({"train_images": np.zeros((2, 8, 8), np.uint8), "train_labels": np.array(["a", "b"])}, "expected numbers"),
        (
            {
                "train_images": np.zeros((2, 8, 8)),
                "train_labels": np.zeros((2, 1)),
                "val_images": np.zeros((2, 8, 8)),
                "val_labels": np.zeros((2, 2)),
            },
            "different widths",
        ),
        ({"train_images": np.zeros((2, 8, 8)), "train_labels": np.array([0.5, 1])}, "a label is 0.5"),
        ({"train_images": np.zeros((2, 8, 8)), "train_labels": np.array(3)}, "expected numbers, \\(N,\\)"),
    ],
)
def test_npz_edges_end_in_one_line_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataFormatError, match=message):
        load_manifest(DataConfig(str(tmp_path / "d.npz")))
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="not an .npz archive"):
        load_manifest(DataConfig(str(tmp_path / "x.npz")))
