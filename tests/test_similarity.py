"""Layer similarity (`tlmic similarity`): linear CKA, debiased CKA, the minibatch estimator and SVCCA,
each against an independent computation (the definitions in direct numpy or plain loops, scikit-learn's
CCA, data with known canonical correlations); between stores; and the feature reuse of a finetuning run."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.cross_decomposition import CCA
from tlmic_cli.main import cli

from tlmic_feats import FeatureStore, SimilarityConfig, linear_cka, minibatch_cka, run_similarity, svcca
from tlmic_feats.features.similarity import (
    LayerSource,
    canonical_correlations,
    choose_estimator,
    similarity_matrix,
    unbiased_hsic,
)
from tlmic_feats.runtime.errors import UsageError

# --- independent references --------------------------------------------------------------------------


def hsic_ref(x, y):
    """HSIC of Gretton et al. (2005) with linear kernels: tr(KHLH) / (n-1)^2, H the centring matrix."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(x @ x.T @ h @ y @ y.T @ h) / (n - 1) ** 2


def cka_ref(x, y):
    return hsic_ref(x, y) / np.sqrt(hsic_ref(x, x) * hsic_ref(y, y))


def cka_feature_space(x, y):
    """Kornblith et al. (2019), eq. 5: ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) on centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def hsic_song_loop(x, y):
    """The unbiased HSIC of Song et al. (2012), their closed form, in plain loops over the raw
    (uncentred) linear kernels with zeroed diagonals."""
    n = len(x)
    k = [[float(x[i] @ x[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    l_ = [[float(y[i] @ y[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    trace = sum(k[i][j] * l_[j][i] for i in range(n) for j in range(n))
    sum_k = sum(map(sum, k))
    sum_l = sum(map(sum, l_))
    ones_kl_ones = sum(sum(k[i]) * sum(l_[i]) for i in range(n))  # 1'K~L~1 = (K~1)'(L~1)
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 / (n - 2) * ones_kl_ones) / (n * (n - 3))


def hsic_u_statistic(x, y):
    """The same estimator from its definition: the U-statistic over ordered 4-tuples of distinct
    images of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq (summing every ordering symmetrizes it)."""
    k, l_ = x @ x.T, y @ y.T
    terms = [k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
             for i, j, q, r in itertools.permutations(range(len(x)), 4)]  # fmt: skip
    return float(np.mean(terms))


def cka_debiased_loop(x, y):
    return hsic_song_loop(x, y) / np.sqrt(hsic_song_loop(x, x) * hsic_song_loop(y, y))


def related(rng, n, p, q, noise=1.0):
    x = rng.normal(size=(n, p))
    return x, np.tanh(x @ rng.normal(size=(p, q))) + noise * rng.normal(size=(n, q))


# --- linear CKA ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p,q", [(5, 7), (40, 3), (40, 60)])  # features form, mixed, two Grams (n = 30)
def test_linear_cka_equals_the_hsic_definition_and_the_feature_space_formula(p, q):
    rng = np.random.default_rng(p * q)
    x, y = related(rng, 30, p, q)
    x += 3.0  # uncentred input: the library centres
    value = linear_cka(x, y)
    assert value == pytest.approx(cka_ref(x, y), abs=1e-10)
    assert value == pytest.approx(cka_feature_space(x, y), abs=1e-10)
    assert 0 < value < 1


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling_not_to_other_linear_maps():
    rng = np.random.default_rng(1)
    x, y = related(rng, 200, 8, 12)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    base = linear_cka(x, y)
    assert linear_cka(x, 7.5 * y @ q) == pytest.approx(base, abs=1e-12)
    assert linear_cka(0.01 * x, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q8, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3 * x @ q8) == pytest.approx(1.0, abs=1e-12)
    squash = np.diag([1.0, 1e-3, 1, 1, 1, 1, 1, 1])  # invertible, not orthogonal: CKA is not invariant to it
    assert linear_cka(x, x @ squash) < 0.95
    assert linear_cka(x, y, debiased=True) == pytest.approx(linear_cka(x, 2 * y @ q, debiased=True), abs=1e-12)


def test_a_constant_layer_has_no_similarity():
    x = np.random.default_rng(0).normal(size=(10, 3))
    assert np.isnan(linear_cka(x, np.ones((10, 4))))


# --- the unbiased HSIC and debiased CKA ------------------------------------------------------------------------


@pytest.mark.parametrize("p,q", [(3, 2), (12, 15)])  # n = 8: features form, then two Grams
def test_unbiased_hsic_equals_song_et_al_in_loops_and_the_u_statistic(p, q):
    rng = np.random.default_rng(p)
    x, y = related(rng, 8, p, q)
    x, y = x + 2.0, y - 1.0  # the estimator is invariant to shifts; the references use the raw kernels
    assert hsic_song_loop(x, y) == pytest.approx(hsic_u_statistic(x, y), rel=1e-10)
    assert unbiased_hsic(x, y) == pytest.approx(hsic_song_loop(x, y), rel=1e-10)
    assert linear_cka(x, y, debiased=True) == pytest.approx(cka_debiased_loop(x, y), abs=1e-10)


def test_debiased_cka_removes_the_small_sample_bias_between_independent_layers():
    rng = np.random.default_rng(3)
    biased, debiased = [], []
    for _ in range(20):
        x, y = rng.normal(size=(30, 50)), rng.normal(size=(30, 50))
        biased.append(linear_cka(x, y))
        debiased.append(linear_cka(x, y, debiased=True))
    assert np.mean(biased) > 0.5  # 30 images, 50 features: unrelated layers look alike
    assert abs(np.mean(debiased)) < 0.03


# --- the minibatch estimator -------------------------------------------------------------------------------


def test_minibatch_cka_with_one_batch_of_every_row_is_debiased_cka():
    rng = np.random.default_rng(4)
    x, y = related(rng, 40, 6, 9)
    assert minibatch_cka(x, y, batch_size=40) == pytest.approx(cka_debiased_loop(x, y), abs=1e-10)


def test_minibatch_cka_converges_to_the_full_unbiased_estimate_as_passes_grow():
    rng = np.random.default_rng(5)
    x, y = related(rng, 400, 10, 20, noise=2.0)
    full = linear_cka(x, y, debiased=True)

    def rms_error(passes):
        errors = [minibatch_cka(x, y, batch_size=50, passes=passes, seed=s) - full for s in range(6)]
        return float(np.sqrt(np.mean(np.square(errors))))

    one, many = rms_error(1), rms_error(64)
    assert many < one / 3  # the spread shrinks as 1/sqrt(passes): 8 times expected
    assert many < 0.01


def test_minibatch_matrix_pairs_agree_with_one_pair_at_a_time():
    rng = np.random.default_rng(6)
    x, y = related(rng, 120, 5, 7)
    layers = LayerSource.from_arrays({"x": x, "y": y, "z": rng.normal(size=(120, 4))})
    m = similarity_matrix(layers, estimator="minibatch", batch_size=30, passes=2, seed=3)
    assert np.allclose(np.diag(m), 1.0) and np.allclose(m, m.T)
    assert m[0, 1] == pytest.approx(minibatch_cka(x, y, batch_size=30, passes=2, seed=3), abs=1e-12)


# --- SVCCA --------------------------------------------------------------------------------------------------


def test_canonical_correlations_recover_known_ones_and_match_scikit_learns_cca():
    rng = np.random.default_rng(7)
    n, rho = 4000, np.array([0.9, 0.6, 0.3])
    u = rng.normal(size=(n, 3))
    v = rho * u + np.sqrt(1 - rho**2) * rng.normal(size=(n, 3))
    x = np.hstack([u, rng.normal(size=(n, 2))]) @ rng.normal(size=(5, 5))  # mixed with 2 noise directions
    y = np.hstack([v, rng.normal(size=(n, 1))]) @ rng.normal(size=(4, 4))
    got = canonical_correlations(x, y, variance=1.0)
    assert np.allclose(got[:3], rho, atol=0.03)
    cca = CCA(n_components=4, scale=False, max_iter=5000, tol=1e-12).fit(x, y)
    xs, ys = cca.transform(x, y)
    sk = sorted((abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(4)), reverse=True)
    assert np.allclose(got, sk, atol=1e-6)


def test_svcca_keeps_99_percent_of_the_variance_like_a_direct_pca_and_whitening():
    rng = np.random.default_rng(8)
    n = 500
    x = rng.normal(size=(n, 6)) * np.array([10, 6, 3, 2, 0.2, 0.1])  # the last two: < 1% of the variance
    y = np.tanh(x[:, :4] @ rng.normal(size=(4, 5))) + 0.5 * rng.normal(size=(n, 5))

    def reduce(a):
        a = a - a.mean(0)
        w, v = np.linalg.eigh(np.cov(a.T))
        w, v = w[::-1], v[:, ::-1]
        k = int(np.argmax(np.cumsum(w) / w.sum() >= 0.99)) + 1
        return a @ v[:, :k]

    rx, ry = reduce(x), reduce(y)
    assert rx.shape[1] == 4  # the reference dropped the two smallest directions
    sxx, syy, sxy = rx.T @ rx, ry.T @ ry, rx.T @ ry
    wx, wy = np.linalg.inv(np.linalg.cholesky(sxx)), np.linalg.inv(np.linalg.cholesky(syy))
    reference = np.linalg.svd(wx @ sxy @ wy.T, compute_uv=False)
    assert np.allclose(canonical_correlations(x, y), reference, atol=1e-10)
    assert svcca(x, y) == pytest.approx(reference.mean(), abs=1e-10)
    assert svcca(x, 3 * x @ np.linalg.qr(rng.normal(size=(6, 6)))[0]) == pytest.approx(1.0, abs=1e-10)


# --- every pair of many layers ----------------------------------------------------------------------------------


def test_similarity_matrix_in_groups_equals_all_at_once_and_each_pair(tmp_path):
    rng = np.random.default_rng(9)
    n = 25
    arrays = {"1": rng.normal(size=(n, 4)), "2": rng.normal(size=(n, 40)), "3": rng.normal(size=(n, 10))}
    arrays["4"] = np.tanh(arrays["2"][:, :12])
    layers = LayerSource.from_arrays(arrays)
    names = list(arrays)
    for method, ref in (("cka", cka_ref), ("cka-debiased", cka_debiased_loop), ("svcca", svcca)):
        whole = similarity_matrix(layers, method=method, estimator="full")
        grouped = similarity_matrix(layers, method=method, estimator="full", max_bytes=1)  # one layer at a time
        assert np.allclose(whole, grouped, atol=1e-12)
        for i, j in itertools.combinations_with_replacement(range(4), 2):
            assert whole[i, j] == pytest.approx(ref(arrays[names[i]], arrays[names[j]]), abs=1e-9), (method, i, j)
    other = LayerSource.from_arrays({"a": arrays["3"], "b": arrays["1"]})
    cross = similarity_matrix(layers, other, estimator="full", max_bytes=1)
    assert cross.shape == (4, 2) and cross[2, 0] == pytest.approx(1.0) and cross[0, 1] == pytest.approx(1.0)
    assert cross[1, 0] == pytest.approx(cka_ref(arrays["2"], arrays["3"]), abs=1e-10)


def test_auto_takes_the_full_estimator_while_it_fits_and_minibatches_beyond():
    gb = 1 << 30
    assert choose_estimator(5000, [2048] * 30, "cka", 2 * gb) == "full"  # Grams in groups
    assert choose_estimator(50_000, [64] * 30, "cka", 2 * gb) == "full"  # every layer fits at once
    assert choose_estimator(50_000, [2048] * 30, "cka", 2 * gb) == "minibatch"
    assert choose_estimator(50_000, [2048] * 30, "svcca", 2 * gb) == "full"
    with pytest.raises(UsageError, match="minibatch estimator is CKA's"):
        similarity_matrix(LayerSource.from_arrays({"a": np.eye(5)}), method="svcca", estimator="minibatch")


# --- stores -------------------------------------------------------------------------------------------------


def _store(path, arrays, ids, splits=None, chunk_rows=1024):
    n = len(ids)
    splits = splits if splits is not None else np.array(["train", "val", "test"])[np.arange(n) % 3]
    return FeatureStore.from_arrays(
        path, {k: v.astype(np.float32) for k, v in arrays.items()}, labels=np.arange(n) % 2, label_kind="binary",
        label_names=["a", "b"], splits=splits, ids=np.asarray(ids), chunk_rows=chunk_rows,
    )  # fmt: skip


@pytest.fixture
def two_stores(tmp_path):
    rng = np.random.default_rng(10)
    n = 36
    ids = np.array([f"img{i:02d}" for i in range(n)])
    a = {"1": rng.normal(size=(n, 5)), "2": rng.normal(size=(n, 50))}
    b = {"1": np.tanh(a["1"] @ rng.normal(size=(5, 6))), "3": rng.normal(size=(n, 8))}
    order = rng.permutation(n)  # the second store holds the same images in another order
    _store(tmp_path / "pre.zarr", a, ids)
    _store(tmp_path / "fin.zarr", {k: v[order] for k, v in b.items()}, ids[order])
    return tmp_path, {k: v.astype(np.float32) for k, v in a.items()}, {k: v.astype(np.float32) for k, v in b.items()}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_stores_are_matched_by_image_id_and_written_as_csv_and_heatmap(two_stores):
    root, a, b = two_stores
    result = run_similarity(
        SimilarityConfig(store=root / "pre.zarr", vs=root / "fin.zarr", out=root / "sim"), progress=False
    )
    rows = _read_csv(result.csv)
    assert list(rows[0]) == ["a", "b", "method", "value"]
    got = {(r["a"], r["b"]): float(r["value"]) for r in rows}
    assert set(got) == {(f"pre:L{i}", f"fin:L{j}") for i in "12" for j in "13"}
    for i, j in itertools.product("12", "13"):
        assert got[(f"pre:L{i}", f"fin:L{j}")] == pytest.approx(cka_ref(a[i].astype(float), b[j].astype(float)),
                                                                abs=1e-8)  # fmt: skip
    assert {r["method"] for r in rows} == {"cka"} and result.estimator == "full"
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(result.out.glob("*.tmp*"))


def test_one_store_on_one_split_with_debiased_cka_and_minibatches(two_stores):
    root, a, _ = two_stores
    test = np.arange(36) % 3 == 2
    config = SimilarityConfig(store=root / "pre.zarr", method="cka-debiased", split="test", out=root / "sim")
    result = run_similarity(config, progress=False)
    assert result.n_images == test.sum() and result.names_a == result.names_b == ["L1", "L2"]
    reference = cka_debiased_loop(a["1"][test].astype(float), a["2"][test].astype(float))
    assert result.values[0, 1] == pytest.approx(reference, abs=1e-8)
    # one minibatch of every test image, read through the store: the same estimate
    mini = run_similarity(
        SimilarityConfig(store=root / "pre.zarr", estimator="minibatch", batch_size=12, split="test",
                         out=root / "mini"), progress=False,
    )  # fmt: skip
    assert mini.values[0, 1] == pytest.approx(result.values[0, 1], abs=1e-9)
    assert {r["method"] for r in _read_csv(mini.csv)} == {"cka-minibatch"}


def test_minibatches_read_through_store_chunks_cover_every_row_once_per_pass(tmp_path):
    from tlmic_feats.features.similarity import minibatches

    plan = minibatches(103, 8, 10, 25, seed=0, passes=2)
    for p in range(2):
        covered = np.concatenate([pos[b] for pos, batches in plan[p * 4 : (p + 1) * 4] for b in batches])
        assert sorted(covered) == list(range(103))
    assert all(8 <= len(b) <= 15 for _pos, batches in plan for b in batches)


def test_stores_of_other_images_are_refused_in_one_line(tmp_path, two_stores):
    root, a, _ = two_stores
    ids = np.array([f"other{i:02d}" for i in range(36)])
    _store(root / "else.zarr", {"1": a["1"]}, ids)
    r = CliRunner().invoke(cli, ["similarity", "--store", str(root / "pre.zarr"), "--vs", str(root / "else.zarr"),
                                 "--out", str(root / "x"), "--quiet"])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and "do not hold the same images: 36 of 36 only in the first" in r.output


def test_cli_writes_the_outputs_and_refuses_store_and_run_together(two_stores):
    root, _, _ = two_stores
    r = CliRunner().invoke(cli, ["similarity", "--store", str(root / "pre.zarr"), "--out", str(root / "o"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (root / "o" / "similarity.csv").is_file() and (root / "o" / "similarity.png").is_file()
    assert "adjacent cut points least alike: L1 -> L2" in r.output and "note:" not in r.output
    r = CliRunner().invoke(cli, ["similarity", "--store", str(root / "pre.zarr"), "--method", "svcca", "--out",
                                 str(root / "s"), "--quiet"])  # fmt: skip
    assert r.exit_code == 0 and "note: SVCCA on 36 images of layers up to 36 features wide" in r.output, r.output
    for args, message in (
        (["--store", str(root / "pre.zarr"), "--run", str(root)], "give --store (a feature store) or --run"),
        ([], "give --store (a feature store) or --run"),
        (["--run", str(root), "--vs", "x.zarr"], "--vs apply to --store"),
        (["--store", str(root / "pre.zarr"), "--method", "svcca", "--estimator", "minibatch"], "minibatch is CKA's"),
    ):
        r = CliRunner().invoke(cli, ["similarity", *args])
        assert r.exit_code == 2 and r.output.count("\n") == 1 and message in r.output, (args, r.output)


# --- feature reuse of a finetuning run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(phantom_dir, tmp_path_factory):
    """Two steps of finetuning a randomly initialised ResNet-18 cut after block 2, on 32-px crops."""
    from tlmic_feats import DataConfig
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.runtime.options import from_flat

    config = from_flat(
        FinetuneConfig, data=DataConfig(str(phantom_dir)), backbone="resnet18", weights="random:0", truncate="2",
        input_size=32, out=str(tmp_path_factory.mktemp("reuse") / "run"), steps=2, eval_every=1, batch_size=8,
        lr=0.01, precision="fp32", bootstrap=10, patience=10, export_onnx=False, compactness=False, pixel_cache=False,
    )  # fmt: skip
    return run_finetune(config, progress=False, log=lambda m: None).out


def _features(run, address, *, trained):
    """Pooled features of the test images at ``address`` by the network's own forward
    (``build_network(...).features``), pretrained or with the run's trained weights."""
    import json

    import torch

    from tlmic_feats import DataConfig, build_backbone, load_manifest
    from tlmic_feats.backbones.networks import build_network
    from tlmic_feats.backbones.preprocess import center_crop
    from tlmic_feats.finetune.setup import load_pixels_for

    backbone = build_backbone("resnet18", "random:0", seed=0, input_size=32)
    if trained:  # the run's network shares its modules with the backbone: trained weights everywhere below the cut
        net = build_network(backbone, "2", 1, 0.0)
        net.load_state_dict(torch.load(run / "best.pt", weights_only=True)["model"])
    manifest = load_manifest(DataConfig(json.loads((run / "run.json").read_text())["config"]["data"]["path"]))
    rows = np.flatnonzero(manifest.splits == "test")
    x = center_crop(torch.from_numpy(load_pixels_for(manifest, rows, backbone.preprocess, 0))[:, None], 32)
    with torch.inference_mode():
        return build_network(backbone, address, 1, 0.0).eval().features(x).double().numpy()


def test_feature_reuse_equals_cka_of_each_networks_own_features(tiny_run):
    from tlmic_feats import feature_reuse
    from tlmic_feats.backbones.taps import address_key

    reuse = feature_reuse(tiny_run)
    assert reuse.split == "test" and reuse.n_images == 8 and reuse.method == "cka"
    assert {"1", "2"} <= set(reuse.addresses)
    assert [address_key(a) for a in reuse.addresses] == sorted(address_key(a) for a in reuse.addresses)
    assert max(address_key(a) for a in reuse.addresses) == address_key("2")
    for address, value in reuse.by_address().items():
        reference = cka_ref(_features(tiny_run, address, trained=False), _features(tiny_run, address, trained=True))
        assert value == pytest.approx(reference, abs=1e-5), address
    assert min(reuse.values) < 0.999  # two steps of finetuning changed the features
    rows = _read_csv(tiny_run / "feature_reuse.csv")
    assert [r["address"] for r in rows] == [f"L{a}" for a in reuse.addresses]
    assert reuse.plot.read_bytes()[:4] == b"\x89PNG"


def test_feature_reuse_at_step_0_is_1_at_every_cut_point_and_keeps_other_methods(tiny_run, tmp_path):
    import shutil

    import torch

    from tlmic_feats import build_backbone, feature_reuse
    from tlmic_feats.backbones.networks import build_network
    from tlmic_feats.finetune.reuse import read_feature_reuse

    run = tmp_path / "step0"
    shutil.copytree(tiny_run, run)
    untrained = build_network(build_backbone("resnet18", "random:0", seed=0, input_size=32), "2", 1, 0.2)
    torch.save({"model": untrained.state_dict()}, run / "best.pt")  # the weights finetuning started from
    r = CliRunner().invoke(cli, ["similarity", "--run", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    cka = read_feature_reuse(run)
    assert len(cka.values) >= 3 and np.allclose(cka.values, 1.0, atol=1e-9)
    debiased = feature_reuse(SimilarityConfig(run=run, method="cka-debiased"))
    assert np.allclose(debiased.values, 1.0, atol=1e-9)
    assert read_feature_reuse(run).values == cka.values  # the CKA rows are kept beside the debiased ones
    with pytest.raises(UsageError, match="holds no svcca on test images; it holds cka on test, cka-debiased"):
        read_feature_reuse(run, method="svcca")
