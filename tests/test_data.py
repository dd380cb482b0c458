"""The data layer: readers, labels, splits and preprocessing."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tlmic_feats.data import DataConfig, load_manifest, make_splits, patients_straddling
from tlmic_feats.runtime.errors import DataFormatError, MissingColumnError
from tlmic_feats.testing.datasets import write_images


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_imagefolder_with_split_folders(phantom_dir):
    m = load_manifest(DataConfig(str(phantom_dir)))
    assert m.format == "imagefolder" and m.split_origin == "data"
    assert m.label_kind == "binary" and m.label_names == ("normal", "nodule")
    assert len(m) == 36
    for i in range(len(m)):
        split, cls, _ = m.ids[i].split("/")
        assert m.splits[i] == split and m.labels[i, 0] == ("normal", "nodule").index(cls)


def test_imagefolder_without_split_gets_seeded_stratified_split(tmp_path):
    for cls, n in (("NORMAL", 30), ("PNEUMONIA", 70)):
        write_images(tmp_path / cls, n, seed=len(cls), size=(40, 40))
    a = load_manifest(DataConfig(str(tmp_path), split_seed=1))
    b = load_manifest(DataConfig(str(tmp_path), split_seed=1))
    c = load_manifest(DataConfig(str(tmp_path), split_seed=2))
    np.testing.assert_array_equal(a.splits, b.splits)
    assert (a.splits != c.splits).any()
    assert a.label_names == ("NORMAL", "PNEUMONIA") and a.split_origin.startswith("generated")
    for s, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        m = a.splits == s
        assert abs(m.sum() - 100 * frac) <= 2
        assert abs(a.labels[m, 0].mean() - 0.7) <= 0.07  # stratified: prevalence kept


def test_negative_class_first_and_positive_option(tmp_path):
    for cls in ("abnormal", "normal"):
        write_images(tmp_path / cls, 4, seed=len(cls), size=(32, 32))
    assert load_manifest(DataConfig(str(tmp_path))).label_names == ("normal", "abnormal")
    assert load_manifest(DataConfig(str(tmp_path), positive_class="normal")).label_names == ("abnormal", "normal")
    with pytest.raises(DataFormatError, match="positive class 'x' not found"):
        load_manifest(DataConfig(str(tmp_path), positive_class="x"))


def test_csv_binary_multiclass_and_patient_grouped_split(tmp_path):
    paths = write_images(tmp_path / "img", 60, size=(32, 32))
    rng = np.random.default_rng(0)
    patients = [f"p{i // 3}" for i in range(60)]  # three images per patient
    labels = [["cat", "dog", "eel"][i % 3] for i in range(60)]
    _write_csv(
        tmp_path / "m.csv",
        ["path", "label", "patient_id"],
        [[f"img/{p.name}", lab, pid] for p, lab, pid in zip(paths, labels, patients, strict=True)],
    )
    m = load_manifest(DataConfig(str(tmp_path / "m.csv")))
    assert m.label_kind == "multiclass" and m.label_names == ("cat", "dog", "eel")
    assert patients_straddling(m.splits, m.patient_ids) == []
    assert set(m.splits) == {"train", "val", "test"}
    # binary, numeric
    _write_csv(tmp_path / "b.csv", ["path", "pneumonia"], [[f"img/{p.name}", int(rng.random() < 0.3)] for p in paths])
    with pytest.raises(MissingColumnError, match="b.csv has no 'label' column: name the label column"):
        load_manifest(DataConfig(str(tmp_path / "b.csv")))  # never guessed from the other columns
    b = load_manifest(DataConfig(str(tmp_path / "b.csv"), label_columns=("pneumonia",)))
    assert b.label_kind == "binary" and b.label_names == ("not pneumonia", "pneumonia")


def test_csv_multilabel_with_missing_and_given_split(tmp_path):
    paths = write_images(tmp_path, 6, size=(32, 32))
    rows = [
        [p.name, "1", "", split]
        for p, split in zip(paths, ["train", "train", "valid", "val", "test", "test"], strict=True)
    ]
    rows[1][1], rows[1][2] = "0", "1.0"
    _write_csv(tmp_path / "m.csv", ["path", "effusion", "edema", "split"], rows)
    m = load_manifest(DataConfig(str(tmp_path / "m.csv"), label_columns=("effusion", "edema")))
    assert m.label_kind == "multilabel" and m.label_names == ("effusion", "edema")
    assert np.isnan(m.labels[0, 1]) and m.labels[1, 1] == 1 and m.labels[1, 0] == 0
    assert list(m.splits) == ["train", "train", "val", "val", "test", "test"] and m.split_origin == "data"


def test_csv_errors_name_the_problem(tmp_path):
    paths = write_images(tmp_path, 3, size=(32, 32))
    _write_csv(tmp_path / "a.csv", ["file", "label"], [[p.name, 1] for p in paths])
    with pytest.raises(MissingColumnError, match="path column 'path' not in a.csv; columns: file, label"):
        load_manifest(DataConfig(str(tmp_path / "a.csv")))
    with pytest.raises(MissingColumnError, match="'nodule'.*columns: file, label"):
        load_manifest(DataConfig(str(tmp_path / "a.csv"), path_column="file", label_columns=("nodule",)))
    _write_csv(tmp_path / "b.csv", ["path", "x", "y"], [[p.name, "2", "0"] for p in paths])
    with pytest.raises(DataFormatError, match=r"b.csv row 2: label 'x' is '2'; valid: 0, 1 or empty"):
        load_manifest(DataConfig(str(tmp_path / "b.csv"), label_columns=("x", "y")))
    _write_csv(tmp_path / "c.csv", ["path", "label"], [["../../etc/passwd", 1], [paths[0].name, 0]])
    with pytest.raises(DataFormatError, match="leaves the data root"):
        load_manifest(DataConfig(str(tmp_path / "c.csv")))
    _write_csv(tmp_path / "d.csv", ["path", "label"], [[paths[0].name, 1], [paths[0].name, 0]])
    with pytest.raises(DataFormatError, match="duplicate image ids"):
        load_manifest(DataConfig(str(tmp_path / "d.csv")))


def test_medmnist_npz_arrays_stay_arrays(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    m = load_manifest(DataConfig(str(tmp_path / "pneumoniamnist.npz")))
    assert m.format == "medmnist" and m.label_names == ("normal", "pneumonia") and len(m) == 20
    assert list(m.ids[:2]) == ["train/0", "train/1"] and m.splits[-1] == "test"
    np.testing.assert_array_equal(np.asarray(m.source.load(13)), arrays["val_images"][1])
    assert list(tmp_path.iterdir()) == [tmp_path / "pneumoniamnist.npz"]  # nothing written out
    # multi-label (chestmnist-like)
    np.savez(
        tmp_path / "chestmnist.npz",
        train_images=arrays["train_images"],
        train_labels=rng.integers(0, 2, (12, 14)),
        val_images=arrays["val_images"],
        val_labels=rng.integers(0, 2, (4, 14)),
    )
    c = load_manifest(DataConfig(str(tmp_path / "chestmnist.npz")))
    assert c.label_kind == "multilabel" and len(c.label_names) == 14 and c.label_names[0] == "atelectasis"
    assert set(c.splits) == {"train", "val"}


def test_generated_split_groups_patients_for_multilabel():
    rng = np.random.default_rng(5)
    n = 300
    labels = (rng.random((n, 4)) < [0.5, 0.2, 0.05, 0.02]).astype(np.float32)
    patients = np.array([f"p{i // 4}" for i in range(n)])
    splits = make_splits(labels, "multilabel", patient_ids=patients, seed=0)
    assert patients_straddling(splits, patients) == []
    for s, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs((splits == s).mean() - frac) < 0.05
    # the rare label reaches val and test
    assert all(labels[splits == s, 3].sum() >= 1 for s in ("val", "test"))


def test_preprocessing_matches_torchvision_transforms(kermany_dir):
    """tlmic's grayscale uint8 path equals torchvision's ImageNet eval transform of the RGB image."""
    import torch
    import torchvision.models as tvm
    from PIL import Image

    from tlmic_feats.backbones.preprocess import Preprocess, device_normalize
    from tlmic_feats.data.images import open_image, resize_center_crop

    w = tvm.ResNet50_Weights.IMAGENET1K_V1
    p = Preprocess.from_torchvision(w)
    for f in sorted(kermany_dir.rglob("*.jpeg"))[:4]:
        ours = resize_center_crop(
            open_image(str(f)), resize_size=p.resize_size, input_size=p.input_size, interpolation=p.interpolation
        )
        x = device_normalize(p)(torch.from_numpy(ours)[None, None])[0]
        ref = w.transforms()(Image.open(f).convert("RGB"))
        assert x.shape == ref.shape == (3, 224, 224)
        assert (x - ref).abs().max() < 1e-5


@pytest.mark.parametrize("interpolation", ["bilinear", "hf-bicubic", "xrv"])
def test_the_pixel_caches_squares_crop_to_exactly_the_evaluation_view(interpolation, kermany_dir):
    """The pixel cache keeps resized squares and crops the evaluation view from them later: on real (non-square)
    chest films, at the weights' size and at reduced input sizes (146 -> 128, 109 -> 96, 91 -> 80), the two
    crops give exactly the one crop of the direct path, with torchvision's offsets (half to even) or a
    transformers processor's (rounded down). Rounding each of two offsets on its own put half the films a
    pixel off at 128 px."""
    import torch
    import torchvision
    from PIL import Image

    from tlmic_feats.backbones.preprocess import center_crop
    from tlmic_feats.data.images import resize_center_crop

    if interpolation == "xrv":
        pytest.importorskip("skimage")
    films = []
    for f in sorted(kermany_dir.rglob("*.jpeg"))[:16]:
        with Image.open(f) as im:
            films.append(im.convert("L"))
    assert sum(im.size[0] != im.size[1] for im in films) >= 12  # the case that matters: not square
    naive = 0
    for size, crop in ((256, 224), (146, 128), (109, 96), (91, 80)):
        for im in films:
            direct = resize_center_crop(im, resize_size=size, input_size=crop, interpolation=interpolation)
            square = resize_center_crop(im, resize_size=size, input_size=size, interpolation=interpolation,
                                        then_crop=crop)  # fmt: skip
            assert square.shape == (size, size)
            view = center_crop(torch.from_numpy(square.copy())[None], crop, interpolation)[0].numpy()
            np.testing.assert_array_equal(view, direct, err_msg=f"{interpolation} {size}->{crop}")
            if interpolation == "bilinear":  # and the direct crop is torchvision's own Resize + CenterCrop
                tv = torchvision.transforms.CenterCrop(crop)(torchvision.transforms.Resize(size)(im))
                np.testing.assert_array_equal(view, np.asarray(tv))
            plain = resize_center_crop(im, resize_size=size, input_size=size, interpolation=interpolation)
            plain_view = center_crop(torch.from_numpy(plain.copy())[None], crop, interpolation)[0].numpy()
            naive += not np.array_equal(plain_view, direct)
    assert naive > 0 or interpolation == "xrv"  # the plain centre squares (before) were a pixel off for some
