"""The study's cost model (robust fits against independent implementations, the estimate by hand, a
real calibration replacing an older version's), small-sample warnings against direct counts, and
the tie rule of choices made on validation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tlmic_feats.runtime.options import from_flat
from tlmic_feats.data.sample_size import small_sample_warnings
from tlmic_feats.data.subsets import nested_subsets
from tlmic_feats.finetune.budget import resolve_budget
from tlmic_feats.study.arms import TIE_RULE, describe_tie, rank_by_validation, tie_at_cut
from tlmic_feats.study.plan import (
    LATENCY_CALLS,
    MAC_BAND,
    _theil_sen,
    estimate_parts,
    estimate_seconds,
    fit_family,
    step_seconds,
)

# --- the cost model ---------------------------------------------------------------------------------


def test_the_mac_line_ignores_one_stall():
    x = np.array([1.0, 4, 6, 9, 12, 19, 27, 31]) * 1e6
    y = 0.03 + 2e-8 * x
    y[3] *= 10  # one network timed during a stall
    clean = np.delete(np.arange(len(x)), 3)
    np.testing.assert_allclose(_theil_sen(x, y)[clean], (0.03 + 2e-8 * x)[clean], rtol=1e-6)


def _network(macs: float, step: float | None, *, infer: float = 1e-3, latency: float = 2e-3) -> dict:
    c = {"macs": macs, "build_s": 0.01, "flop_count_s": 0.02, "state_bytes": int(macs), "timed": step is not None}
    if step is not None:
        c.update(
            step_s={"32": step},
            infer_s_per_img=infer,
            latency_s=latency,
            best_write_s=0.05,
            last_write_s=0.15,
        )
    return c


def _family_cal(steps: list[float | None]) -> dict:
    """A backbone of len(steps) - 1 truncations and full, MACs 1..n millions; None: not timed."""
    names = [f"t{i}" for i in range(1, len(steps))] + ["full"]
    cal = {
        n: _network((i + 1) * 1e6, s, infer=(i + 1) * 1e-4) for i, (n, s) in enumerate(zip(names, steps, strict=True))
    }
    cal.update(_family=names, _alias={}, _fixed={"setup_s": 0.4, "outputs_s": 1.5, "val_metrics_s": 0.07})
    return cal


def test_family_fit_clips_a_stall_keeps_depth_order_and_interpolates_untimed_networks():
    line = lambda macs: 0.05 + 0.1 * macs / 1e6  # noqa: E731 (seconds per step, linear in MACs)
    steps = [line(m * 1e6) for m in range(1, 9)]
    steps[4] *= 20  # a stall while t5 was timed
    steps[2] = steps[5] = None  # unit-level cut points: MACs counted, not timed
    cal = fit_family(_family_cal(steps))
    got = np.array([cal[n]["train_step_s"]["32"] for n in cal["_family"]])
    assert np.all(np.diff(got) >= 0)  # a truncated network never costs more than a deeper one
    assert got[4] <= MAC_BAND * line(5e6) + 1e-12  # the stall is bounded by the fit against MACs
    # the untimed t3 lies on the line through its timed neighbours
    assert cal["t3"]["train_step_s"]["32"] == pytest.approx(np.interp(3e6, [2e6, 4e6], got[[1, 3]]))
    # without a stall, the fit changes nothing and interpolation is exact on a line
    clean = fit_family(_family_cal([line(m * 1e6) if m not in (3, 6) else None for m in range(1, 9)]))
    for i, n in enumerate(clean["_family"]):
        assert clean[n]["train_step_s"]["32"] == pytest.approx(line((i + 1) * 1e6))


def test_a_lucky_fast_full_network_does_not_drag_every_truncation_down():
    from scipy.stats import theilslopes
    from sklearn.isotonic import IsotonicRegression

    steps = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.25]  # full timed in a quiet moment
    cal = fit_family(_family_cal(steps))
    got = [cal[n]["train_step_s"]["32"] for n in cal["_family"]]
    macs = np.arange(1, 9) * 1e6
    slope, intercept, _, _ = theilslopes(steps, macs, method="joint")
    line = intercept + slope * macs
    bounded = np.clip(steps, line / MAC_BAND, line * MAC_BAND)
    np.testing.assert_allclose(got, IsotonicRegression().fit_transform(macs, bounded))
    assert got[0] == pytest.approx(0.1) and got[-1] > 0.25


def test_step_seconds_is_a_line_through_the_measured_batches():
    c = {"train_step_s": {"4": 0.3, "32": 1.7}}
    per_image = (1.7 - 0.3) / 28
    assert step_seconds(c, 16) == pytest.approx(0.3 + per_image * 12)
    assert step_seconds({"train_step_s": {"32": 1.6}}, 8) == pytest.approx(0.4)


def test_estimate_adds_steps_evaluations_checkpoints_fixed_costs_and_compactness_by_hand():
    cal = fit_family(_family_cal([0.1, 0.2, 0.3, 0.4]))  # t1 t2 t3 full
    b = resolve_budget(n_train=100, batch_size=32, epochs=1, steps=50, eval_every=10)
    n_val, n_test = 30, 40
    t2, full = cal["t2"], cal["full"]
    training = 50 * 0.2
    evaluations = 5 * (n_val * t2["infer_s"] + 0.07 + 0.15 + 0.05)
    fixed = 0.4 + t2["build_s"] + (n_val + n_test) * t2["infer_s"] + 1.5
    compact = (LATENCY_CALLS * t2["latency_s"] + 0.02) + (0.01 + LATENCY_CALLS * full["latency_s"] + 0.02)
    parts = estimate_parts(cal, "t2", b, n_val, n_test, compactness=True)
    assert parts == pytest.approx(
        {"training": training, "evaluations": evaluations, "fixed": fixed, "compactness": compact}
    )
    assert estimate_seconds(cal, "t2", b, n_val, n_test) == pytest.approx(training + evaluations + fixed)
    # scratch trains the full network, and its compactness table has no second row
    assert estimate_parts(cal, "scratch", b, n_val, n_test, compactness=True)["compactness"] == pytest.approx(
        LATENCY_CALLS * full["latency_s"] + 0.02
    )
    assert np.isnan(estimate_seconds(cal, "cbr-tiny", b, n_val, n_test))  # not calibrated


@pytest.mark.slow
def test_calibration_measures_every_network_and_replaces_an_older_version(phantom_dir, tmp_path):
    from tlmic_feats.backbones.registry import build_backbone
    from tlmic_feats.data.readers import DataConfig
    from tlmic_feats.study.config import StudyConfig
    from tlmic_feats.study.plan import CALIBRATION_VERSION, calibrate, distinct_truncations

    config = from_flat(StudyConfig,
        data=DataConfig(str(phantom_dir)),
        backbone="resnet18",
        weights="random:3",
        input_size=32,
        fractions=(0.25, 1.0),
        seeds=1,
        search="probe",
        baselines=("cbr-tiny",),
        steps=4,
        batch_size=16,
        bootstrap=20,
    )
    backbone = build_backbone(config.backbone, config.weights, input_size=32)
    (tmp_path / "calibration.json").write_text(json.dumps({"t1": {"train_s_per_img": 9.9, "state_bytes": 1}}))
    cal = calibrate(config, backbone, tmp_path)
    assert cal["_meta"]["version"] == CALIBRATION_VERSION and cal["_meta"]["batches"] == [5, 16]
    networks = [*distinct_truncations(backbone), "full", "cbr-tiny"]
    assert set(networks) <= set(cal) and "train_s_per_img" not in cal.get("t1", {})
    family = [cal[a]["train_step_s"]["16"] for a in cal["_family"]]
    assert np.all(np.diff(family) >= 0) and all(v > 0 for v in family)
    assert all(cal[a]["macs"] > 0 and cal[a]["state_bytes"] > 0 for a in networks)
    assert cal["full"]["timed"] and "step_s" in cal["cbr-tiny"]
    assert not list(tmp_path.glob(".calibration*"))  # the timed writes leave nothing behind
    # the same settings reuse it; another input size measures again
    assert calibrate(config, backbone, tmp_path) == cal
    from dataclasses import replace

    bigger = build_backbone(config.backbone, config.weights, input_size=48)
    again = calibrate(replace(config, input_size=48), bigger, tmp_path, arms=["full"])
    assert again["_meta"]["input_size"] == 48 and "t1" not in again  # nothing of the 32 px model kept


# --- small samples ------------------------------------------------------------------------------------


def _manifest(kind: str, train: np.ndarray, val: np.ndarray, test: np.ndarray, names: tuple[str, ...]):
    labels = np.concatenate([train, val, test]).astype(np.float32)
    splits = np.array(["train"] * len(train) + ["val"] * len(val) + ["test"] * len(test))
    return SimpleNamespace(labels=labels, label_kind=kind, label_names=names, splits=splits, patient_ids=None)


def test_binary_warnings_count_what_the_subsets_hold():
    rng = np.random.default_rng(0)
    m = _manifest(
        "binary",
        (rng.random((200, 1)) < 0.3).astype(int),
        np.array([[0]] * 25 + [[1]] * 7),
        np.array([[0]] * 40 + [[1]] * 30),
        ("normal", "nodule"),
    )
    found = small_sample_warnings(m, [0.01, 0.05, 1.0], [0, 1])
    train = np.flatnonzero(m.splits == "train")
    for f in (0.01, 0.05):
        per_seed = [
            np.bincount(m.labels[nested_subsets(train, m.labels, "binary", [f], seed=s)[f], 0].astype(int), minlength=2)
            for s in (0, 1)
        ]
        fewest = np.min(per_seed, axis=0)
        n = min(int(c.sum()) for c in per_seed)
        assert (
            f"small sample: fraction {f:g} trains on {n} images (normal {fewest[0]}, nodule {fewest[1]}), "
            "fewer than 10 images of a class" in "\n".join(found)
        )
    assert not any("fraction 1 " in w for w in found)  # all of the data is enough
    assert any(
        w.startswith("small sample: validation holds 32 images (normal 25, nodule 7), fewer than 20") for w in found
    )
    assert not any("test holds" in w for w in found)  # 40 and 30
    assert len(found) == 3


def test_multilabel_warnings_are_per_label_and_ignore_missing_values():
    nan = np.nan
    train = np.array([[1, 0], [1, nan], [0, 1]] * 20)  # 40 positives of a, 20 of b
    test = np.array([[1, 1]] * 19 + [[nan, 1]] * 5 + [[0, 0]] * 10)  # a: 19 positives, b: 24
    m = _manifest("multilabel", train, np.array([[1, 1]] * 30), test, ("a", "b"))
    found = small_sample_warnings(m, [0.25, 1.0])
    rows = nested_subsets(np.arange(60), m.labels, "multilabel", [0.25], seed=0)[0.25]
    a, b = int((m.labels[rows, 0] == 1).sum()), int((m.labels[rows, 1] == 1).sum())
    assert min(a, b) < 10  # the case this test is about
    assert found == [
        f"small sample: fraction 0.25 trains on {len(rows)} images (a {a}, b {b}), fewer than 10 positives of a "
        "label: training is unstable and its scores vary widely between seeds",
        "small sample: test holds 34 images (a 19, b 24), fewer than 20 positives of a label: confidence intervals on "
        "test are wide, and can be degenerate (e.g. [1.000, 1.000])",
    ]


def test_enough_data_says_nothing():
    m = _manifest("multiclass", np.repeat([[0], [1], [2]], 40, axis=0), np.repeat([[0], [1], [2]], 20, axis=0),
                  np.repeat([[0], [1], [2]], 25, axis=0), ("a", "b", "c"))  # fmt: skip
    assert small_sample_warnings(m, [0.25, 1.0], [0, 1, 2]) == []


def test_finetuning_on_two_images_says_so(phantom_dir, tmp_path):
    from tlmic_feats.data.readers import DataConfig
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune

    logged = []
    run_finetune(
        from_flat(FinetuneConfig,
            data=DataConfig(str(phantom_dir)),
            backbone="resnet18",
            weights="random:2",
            input_size=32,
            fraction=0.1,
            steps=1,
            bootstrap=10,
            compactness=False,
            export_onnx=False,
            out=str(tmp_path / "run"),
        ),
        progress=False,
        log=logged.append,
    )
    assert "small sample: fraction 0.1 trains on 2 images (normal 1, nodule 1), fewer than 10 images of a class" in (
        "\n".join(logged)
    )


# --- ties on validation ---------------------------------------------------------------------------------


def test_ties_go_to_the_deeper_cut_point_and_are_described():
    scores = {"1": 1.0, "2": 1.0, "3": 1.0, "4": 0.8, "2.1": 1.0 - 1e-12, "5": -np.inf}
    ranking = rank_by_validation(scores)
    assert [a for a, _ in ranking] == [
        "3",
        "2",
        "2.1",
        "1",
        "4",
        "5",
    ]  # -inf: no score, last  # 2.1 lies between 1 and 2
    tie = tie_at_cut(ranking, 2, "block ends by probe val AUPRC")
    assert tie == {
        "what": "block ends by probe val AUPRC",
        "score": 1.0,
        "tied": ["3", "2", "2.1", "1"],
        "taken": ["3", "2"],
        "rule": TIE_RULE,
    }
    assert describe_tie(tie) == (
        "block ends by probe val AUPRC 3, 2, 2.1, 1 tie at 1.000; taken: 3, 2 (ties on validation go to the deeper "
        "cut point)"
    )
    assert tie_at_cut(ranking, 4, "x") is None  # every tied one taken: the rule decided nothing
    # no probe could be scored (two training images): the unscored tie, and the deeper are taken
    unscored = rank_by_validation({"1": -np.inf, "2": -np.inf, "3": -np.inf})
    assert [a for a, _ in unscored] == ["3", "2", "1"]
    assert describe_tie(tie_at_cut(unscored, 2, "block ends by probe val AUPRC")) == (
        "block ends by probe val AUPRC 3, 2, 1 tie without a score; taken: 3, 2 (ties on validation go to the "
        "deeper cut point)"
    )
    assert tie_at_cut(rank_by_validation({"1": 0.9, "2": 0.8}), 1, "x") is None


def test_ranking_without_ties_is_by_score():
    rng = np.random.default_rng(3)
    scores = {str(i): float(v) for i, v in enumerate(rng.random(8), start=1)}
    assert [a for a, _ in rank_by_validation(scores)] == sorted(scores, key=lambda a: -scores[a])


def test_the_report_picks_the_deeper_of_tied_truncated_arms():
    from tlmic_feats.study.report import best_truncated

    arms = [{"arm": "t1", "val_auprc": 1.0}, {"arm": "t3", "val_auprc": 1.0}, {"arm": "t2", "val_auprc": 0.9}]
    assert best_truncated(arms)["arm"] == "t3"
