"""The OpenVINO engine, the fidelity criterion of `auto`, and the choice `auto` makes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tlmic_feats.runtime.options import from_flat
from tlmic_feats import DataConfig, ExtractConfig, extract_features
from tlmic_feats.features.auto import MeasuredChoice, choose_engine, paired_fidelity
from tlmic_feats.runtime.devices import hardware_class
from tlmic_feats.runtime.errors import MissingDependencyError, UsageError


def _cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def _openvino_precisions() -> tuple[str, ...]:
    pytest.importorskip("openvino")
    from tlmic_feats.features.engines import openvino_precisions

    return openvino_precisions()


# --- the engine ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "weights", "pool"), [("efficientnet_lite0", "imagenet", "avgmax"), ("resnet18", "random:3", "avg")]
)
def test_openvino_fp32_features_equal_torch_on_every_cut_point_and_its_graph_is_cached(
    phantom_dir, tmp_path, backbone, weights, pool
):
    _openvino_precisions()
    base = dict(data=DataConfig(str(phantom_dir / "val")), backbone=backbone, weights=weights, layers="all", pool=pool)
    t = extract_features(ExtractConfig(**base, store=str(tmp_path / "t.zarr")), progress=False).store
    o = extract_features(ExtractConfig(**base, engine="openvino", store=str(tmp_path / "o.zarr")), progress=False)
    assert o.store.fingerprint["engine"] == "openvino" and o.store.fingerprint["precision"] == "fp32"
    assert len(t.addresses) > 10
    for a in t.addresses:
        assert _cosines(o.store.features(a), t.features(a)).min() >= 0.9999, a
    irs = list((tmp_path / "cache" / "openvino").glob("*.xml"))
    assert len(irs) == 1 and irs[0].with_suffix(".bin").is_file()
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1  # converted from the shared ONNX graph
    from tlmic_feats.runtime.cache import scan_cache

    assert {i.kind for i in scan_cache(tmp_path / "cache") if i.path.parent.name == "openvino"} == {"openvino"}
    before = irs[0].stat().st_mtime_ns
    extract_features(ExtractConfig(**base, engine="openvino", store=str(tmp_path / "o2.zarr")), progress=False)
    assert irs[0].stat().st_mtime_ns == before  # converted once, reused


def test_openvino_batches_of_any_size_and_bf16_where_offered(phantom_dir, tmp_path):
    """The throughput hint splits a batch over parallel requests: every batch size, the last partial
    one included, gives the same rows as torch; bf16 (where the CPU offers it) stays close and is recorded."""
    import torch

    from tlmic_feats.backbones import build_backbone, select_cut_points
    from tlmic_feats.features.engines import make_engine

    offered = _openvino_precisions()
    b = build_backbone("resnet18", "random:1")
    cps = select_cut_points(b.cut_points, "blocks")
    ov = make_engine("openvino", b, cps, "avg", "cpu", "fp32", cache_dir=tmp_path, key={"t": 1})
    ref = make_engine("torch", b, cps, "avg", "cpu", "fp32")
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (7, 1, 224, 224), dtype=np.uint8))
    want = ref(x)
    assert ov.n_requests >= 1
    for n in (1, 2, 7):
        for got, w in zip(ov(x[:n]), want, strict=True):
            assert got.shape == (n, w.shape[1]) and _cosines(got, w[:n]).min() >= 0.9999
    if "bf16" in offered:
        base = dict(data=DataConfig(str(phantom_dir / "val")), backbone="resnet18", weights="random:1", layers="blocks")
        f32 = extract_features(ExtractConfig(**base, store=str(tmp_path / "a.zarr")), progress=False).store
        b16 = extract_features(
            ExtractConfig(**base, engine="openvino", precision="bf16", store=str(tmp_path / "b.zarr")), progress=False
        ).store
        assert b16.fingerprint["precision"] == "bf16"
        for a in f32.addresses:
            cos = _cosines(b16.features(a), f32.features(a))
            assert 0.999 < cos.min() < 1 - 1e-9, a  # close, and not silently fp32


def test_openvino_refuses_what_it_cannot_run(tmp_path):
    from tlmic_feats.backbones import build_backbone, select_cut_points
    from tlmic_feats.features.engines import make_engine

    offered = _openvino_precisions()
    b = build_backbone("resnet18", "random:0")
    cps = select_cut_points(b.cut_points, "1")
    with pytest.raises(UsageError, match="runs on the CPU"):
        make_engine("openvino", b, cps, "avg", "cuda", "fp32", cache_dir=tmp_path, key={})
    if "fp16" not in offered:
        with pytest.raises(UsageError, match=f"offers {', '.join(offered)}"):
            make_engine("openvino", b, cps, "avg", "cpu", "fp16", cache_dir=tmp_path, key={})


def test_a_missing_openvino_is_one_line_naming_the_extra(phantom_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from tlmic_cli.main import cli

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'tlmic\[openvino\]'"):
        from tlmic_feats.features.engines import import_openvino

        import_openvino()
    args = ["extract", "--data", str(phantom_dir / "val"), "--backbone", "resnet18", "--weights", "random:0"]
    result = CliRunner().invoke(cli, [*args, "--engine", "openvino", "--store", str(tmp_path / "s.zarr"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "tlmic[openvino]" in lines[0] and "Traceback" not in result.output


def test_doctor_reports_whether_openvino_loads_and_its_precisions(monkeypatch):
    from tlmic_feats.doctor import format_report, openvino_status

    status = openvino_status()
    if status["loads"]:
        line = next(ln for ln in format_report(_report_with(status)).splitlines() if ln.startswith("openvino"))
        assert "FP32" in status["capabilities"] and "fp32" in status["precisions"]
        assert f"--precision {'|'.join(status['precisions'])}" in line
    monkeypatch.setattr("tlmic_feats.doctor._version", lambda name: None)
    missing = openvino_status()
    assert not missing["loads"] and "tlmic[openvino]" in missing["error"]
    assert "openvino: does not load (not installed; pip install 'tlmic[openvino]')" in format_report(
        _report_with(missing)
    )


def _report_with(openvino: dict) -> dict:
    return {
        "python": "3",
        "platform": "p",
        "cpu": {
            "cores": 2,
            "flags": {},
            "hardware_class": "cpu",
            "train_precision_auto": "fp32",
            "extract_auto": {},
        },
        "torch": {"cuda_available": False, "cuda_version": None, "devices": [], "threads": 2},
        "onnxruntime": {"providers": {}},
        "openvino": openvino,
        "packages": {},
        "cache": {"root": "c", "bytes": {}},
    }


# --- the fidelity criterion -----------------------------------------------------------------------------


def _probe_scores(n: int = 1200, layers: int = 4, seed: int = 0):
    """Test labels and, per layer, (val AUPRC, test scores) of probes of rising quality."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    ref = {f"{k}": (0.5 + 0.1 * k, y * (0.3 + 0.3 * k) + rng.standard_normal(n)) for k in range(1, layers + 1)}
    return y, ref


def test_identical_or_ulp_perturbed_probes_are_validated():
    y, ref = _probe_scores()
    v = paired_fidelity(y, "binary", ref, dict(ref), n_resamples=200)
    assert v.validated and v.reasons == () and v.best_layer == v.best_layer_reference == "4"
    assert all(c == lo == hi == 0 for c, lo, hi in v.changes.values())
    rng = np.random.default_rng(1)
    tiny = {a: (val, s * (1 + 1e-9 * rng.standard_normal(len(s)))) for a, (val, s) in ref.items()}
    assert paired_fidelity(y, "binary", ref, tiny, n_resamples=200).validated


def test_a_layer_whose_auroc_moves_beyond_chance_fails_and_the_change_is_sklearns():
    from sklearn.metrics import roc_auc_score

    y, ref = _probe_scores()
    rng = np.random.default_rng(2)
    worse = dict(ref)
    worse["2"] = (ref["2"][0], ref["2"][1] + 2.0 * rng.standard_normal(len(y)))  # a real loss of signal
    v = paired_fidelity(y, "binary", ref, worse, n_resamples=200)
    assert not v.validated and v.layers_not_equivalent == ("2",)
    change, lo, hi = v.changes["2"]
    assert change == pytest.approx(roc_auc_score(y, worse["2"][1]) - roc_auc_score(y, ref["2"][1]), abs=1e-12)
    assert hi < 0 and lo <= change <= hi
    assert "1 of 4 layers not shown equivalent within +-0.002 test AUROC (TOST at 0.05" in v.reasons[0]
    assert "e.g. 2:" in v.reasons[0]
    assert v.max_abs_change == (pytest.approx(abs(change)), "2")


def _noisier(s, sd, seed=3):
    return s + sd * np.random.default_rng(seed).standard_normal(len(s))


def test_a_rounding_level_change_is_equivalent_and_a_hundredth_is_not():
    """TOST within +-0.002 AUROC. Scores perturbed by 1e-4 noise (rounding-level) are validated, and
    so is a systematic change of -0.0007 (30 positives' scores lowered by 0.05): its paired 95% CI
    excludes 0 (the earlier "CI contains 0" rule rejected it) but its 90% CI, the 5th to 95th
    percentile of the same paired bootstrap differences (recomputed here), lies inside the margin.
    A layer that loses a hundredth of AUROC is not validated."""
    from sklearn.metrics import roc_auc_score

    from tlmic_feats.features.auto import EQUIVALENCE_MARGIN
    from tlmic_feats.metrics.scores import paired_bootstrap

    y, ref = _probe_scores()
    rounded = {a: (val, _noisier(s, 1e-4, seed=int(a))) for a, (val, s) in ref.items()}
    v = paired_fidelity(y, "binary", ref, rounded, n_resamples=400)
    assert v.validated and v.reasons == () and v.layers_not_equivalent == ()
    biased = dict(ref)
    lowered = ref["3"][1].copy()
    lowered[np.flatnonzero(y == 1)[:30]] -= 0.05
    biased["3"] = (ref["3"][0], lowered)
    v = paired_fidelity(y, "binary", ref, biased, n_resamples=400)
    assert v.validated and v.layers_not_equivalent == ()
    boot = paired_bootstrap(y, {"r": [ref["3"][1]], "c": [lowered]}, "binary", n_resamples=400, seed=0)
    diff = boot["c"]["auroc"] - boot["r"]["auroc"]
    lo, hi = np.percentile(diff, [5, 95])
    assert v.changes["3"][1:] == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert -EQUIVALENCE_MARGIN < lo < hi < 0 and np.percentile(diff, 97.5) < 0  # 95% CI excludes 0
    assert v.changes["3"][0] == pytest.approx(roc_auc_score(y, lowered) - roc_auc_score(y, ref["3"][1]))
    lossy = dict(ref)
    lossy["4"] = (ref["4"][0], _noisier(ref["4"][1], 0.3))
    change = roc_auc_score(y, lossy["4"][1]) - roc_auc_score(y, ref["4"][1])
    assert -0.013 < change < -0.007  # about a hundredth
    v = paired_fidelity(y, "binary", ref, lossy, n_resamples=400)
    assert not v.validated and v.layers_not_equivalent == ("4",) and v.best_layer == "4"


def test_another_best_layer_on_validation_or_a_small_test_set_fails():
    y, ref = _probe_scores()
    moved = dict(ref)
    moved["3"] = (0.99, ref["3"][1])  # same test scores, but validation now prefers layer 3
    v = paired_fidelity(y, "binary", ref, moved, n_resamples=200)
    assert not v.validated and v.reasons == ("best layer on validation 3, fp32's is 4",)
    y_small, small = _probe_scores(n=300)
    v = paired_fidelity(y_small, "binary", small, dict(small), n_resamples=200)
    assert not v.validated and "300 test images, fewer than the 1000" in v.reasons[0]


# --- the choice ------------------------------------------------------------------------------------------


def _row(engine, precision, img_per_s, validated=True, backbone="resnet50", hardware=None):
    return MeasuredChoice(hardware or hardware_class("cpu"), backbone, engine, precision, img_per_s, validated, "f")


def test_auto_takes_the_fastest_validated_installed_choice_for_the_backbone_and_hardware(monkeypatch):
    table = (
        _row("torch", "fp32", 14.0),
        _row("openvino", "fp32", 20.0),
        _row("torch", "bf16", 30.0),
        _row("openvino", "bf16", 90.0, validated=False),  # fastest, but not validated
        _row("onnx", "fp32", 99.0, hardware="cuda"),  # another hardware class
        _row("onnx", "fp32", 99.0, backbone="densenet121"),  # another backbone
    )
    pick = lambda e, p, b="resnet50": choose_engine(e, p, b, "cpu", measured=table)  # noqa: E731
    assert (pick("auto", "auto").engine, pick("auto", "auto").precision) == ("torch", "bf16")
    assert (pick("auto", "fp32").engine, pick("auto", "fp32").precision) == ("openvino", "fp32")
    assert (pick("openvino", "auto").engine, pick("openvino", "auto").precision) == ("openvino", "fp32")
    assert "validated for resnet50" in pick("auto", "auto").reason
    fallback = pick("auto", "auto", "resnet18")
    assert (fallback.engine, fallback.precision) == ("torch", "fp32") and "no validated choice" in fallback.reason
    assert pick("onnx", "bf16").reason == "as asked"  # explicit choices are taken as they are
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        pick("torch", "fp16")

    logged = []
    monkeypatch.setattr("tlmic_feats.features.auto.engine_available", lambda e: e != "openvino")
    c = choose_engine("auto", "fp32", "resnet50", "cpu", measured=table, log=logged.append)
    assert (c.engine, c.precision) == ("torch", "fp32")
    assert logged and "tlmic[openvino]" in logged[0]


def test_auto_is_resolved_before_extraction_and_recorded_in_the_store(phantom_dir, tmp_path):
    base = dict(data=DataConfig(str(phantom_dir / "val")), backbone="resnet18", weights="random:0", layers="1")
    s = extract_features(
        ExtractConfig(**base, engine="auto", precision="auto", store=str(tmp_path / "s.zarr")), progress=False
    ).store
    want = choose_engine("auto", "auto", "resnet18", "cpu")
    assert (s.fingerprint["engine"], s.fingerprint["precision"]) == (want.engine, want.precision)
    assert s.config["engine"] == "auto" and s.config["engine_choice"]["reason"] == want.reason


def test_the_study_extracts_with_its_engine_and_an_old_study_still_resumes(phantom_dir, tmp_path, monkeypatch):
    from tlmic_feats.study.config import StudyConfig
    from tlmic_feats.study.run import run_study

    data = DataConfig(str(phantom_dir / "val"))
    assert from_flat(StudyConfig, data=data).results_key["engine"] == "torch"  # recorded: it decides the features
    assert from_flat(StudyConfig, data=data, engine="openvino").results_key["engine"] == "openvino"
    with pytest.raises(UsageError, match="^engine 'tensorrt' is not valid"):
        from_flat(StudyConfig, data=data, engine="tensorrt").validate()

    seen = []

    class Stop(Exception):
        pass

    def fake_extract(config, **kw):
        seen.append(config)
        raise Stop

    monkeypatch.setattr("tlmic_feats.features.extract.extract_features", fake_extract)
    config = from_flat(StudyConfig, data=data, engine="openvino", extract_precision="bf16", out=str(tmp_path / "s"))
    with pytest.raises(Stop):
        run_study(config, progress=False, log=lambda m: None)
    assert (seen[0].engine, seen[0].precision) == ("openvino", "bf16")


def test_the_measured_table_names_real_choices_and_auto_on_it_takes_only_validated_rows():
    from tlmic_feats.backbones.registry import BACKBONES
    from tlmic_feats.features.auto import MEASURED, engine_available
    from tlmic_feats.features.engines import ENGINES
    from tlmic_feats.runtime.devices import HARDWARE_CLASSES, PRECISIONS

    for r in MEASURED:
        assert r.hardware in HARDWARE_CLASSES and r.engine in ENGINES and r.precision in PRECISIONS[1:], r
        assert r.backbone in BACKBONES and r.img_per_s > 0 and r.figures, r
    for hardware in {r.hardware for r in MEASURED}:
        for backbone in {r.backbone for r in MEASURED if r.hardware == hardware}:
            rows = [r for r in MEASURED if (r.hardware, r.backbone) == (hardware, backbone)]
            best = max((r for r in rows if r.validated), key=lambda r: r.img_per_s)
            device = "cuda" if hardware == "cuda" else "cpu"
            if hardware_class(device) == hardware and engine_available(best.engine):
                pick = choose_engine("auto", "auto", backbone, device)
                assert (pick.engine, pick.precision) == (best.engine, best.precision)


def test_a_remembered_backbone_description_is_the_built_one_and_a_stale_one_is_refused(tmp_path):
    import json

    import torch

    from tlmic_feats.backbones.described import described_backbone, description, remember_backbone
    from tlmic_feats.backbones.registry import build_backbone
    from tlmic_feats.features.engines import EngineSpec, engine_from_spec
    from tlmic_feats.runtime.errors import RunError

    weights = tmp_path / "w.pt"
    built = build_backbone("resnet18", "random:7", input_size=64)
    torch.save(built.model.state_dict(), weights)
    assert described_backbone("resnet18", "random:7", input_size=64) is None
    for w in ("random:7", str(weights)):
        remember_backbone(build_backbone("resnet18", w, input_size=64), w, input_size=64)
        described = described_backbone("resnet18", w, input_size=64)
        assert described.model is None
        assert description(described) == description(build_backbone("resnet18", w, input_size=64))
    assert described_backbone("resnet18", "random:8", input_size=64) is None  # other weights: not described
    assert described_backbone("resnet18", "random:7", input_size=96) is None  # another input size
    torch.save(build_backbone("resnet18", "random:8").model.state_dict(), weights)
    assert described_backbone("resnet18", str(weights), input_size=64) is None  # the file's content changed

    (entry,) = [p for p in (tmp_path / "cache" / "backbones").glob("*.json") if "random" in p.read_text()]
    stale = json.loads(entry.read_text())
    stale["backbone"]["cut_points"][0]["channels"] += 1
    entry.write_text(json.dumps(stale))
    spec = EngineSpec(
        "resnet18", "random:7", 0, 64, ("1",), "avg", "torch", "fp32", "cpu", False, str(tmp_path / "cache"), "{}"
    )
    with pytest.raises(RunError, match="differs from its description under .*backbones; delete that folder"):
        engine_from_spec(spec)
