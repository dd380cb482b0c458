"""What ``--engine auto`` and ``--precision auto`` extract with: the fidelity criterion, the table of
measured choices it judged, and the choice for a backbone on this hardware.

The criterion (:func:`paired_fidelity`). A reduced precision (or another engine) is validated for a
backbone on a hardware class when, on a test set of at least ``MIN_TEST_IMAGES`` images, probes
fitted on its features, against the same probes on torch fp32 features,

(a) choose the same best layer on validation (the probe report's rule: the highest validation
    AUPRC), and
(b) on every layer, the test-AUROC change is shown equivalent to 0 within ``EQUIVALENCE_MARGIN``
    (+-0.002 AUROC): two one-sided tests (TOST) at ``EQUIVALENCE_ALPHA`` = 0.05, that is, the
    paired bootstrap 90% CI of the change (the same test resamples for both) lies inside
    (-0.002, +0.002).

(b) used to ask that every layer's 95% CI *contain* 0: on 1,000 paired test images that flags
changes of a few ten-thousandths (fp32 rounding moved onnxruntime's features by a relative 4e-6 and
three of 24 layers' CIs excluded 0), and it passes a change it cannot resolve. Equivalence asks the
question the choice needs: is the change smaller than the margin, with 95% confidence each way?

``benchmarks/extract.py --parts large`` measures it (logistic-regression probes, 1,000 test and 300
validation phantoms) together with each engine's speed; its verdicts and figures are copied into
``MEASURED`` below. ``auto`` takes, among the validated rows for the backbone and this hardware
class whose engine is installed, the fastest; with none, torch fp32 (the reference itself).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..runtime.devices import hardware_class, resolve_precision
from ..runtime.errors import check_choice
from .engines import ENGINES, OPENVINO_EXTRA

ENGINE_CHOICES = ("auto", *ENGINES)
MIN_TEST_IMAGES = 1000
# Criterion (b): a layer's test-AUROC change must be shown within +-EQUIVALENCE_MARGIN by TOST at
# EQUIVALENCE_ALPHA (its paired bootstrap 1 - 2 alpha = 90% CI inside the margin). 0.002 AUROC is
# far below what a probe's own test CI resolves, and above the largest change an fp32-level
# perturbation made on 1,000 test images (0.0008: the 1e-6 jitter control; onnxruntime and OpenVINO
# fp32 at most 0.0003), below bf16's (0.006 to 0.046 on some layer).
EQUIVALENCE_MARGIN = 0.002
EQUIVALENCE_ALPHA = 0.05


# --- the criterion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidelityVerdict:
    """The criterion's outcome for one engine+precision against the fp32 reference."""

    validated: bool
    reasons: tuple[str, ...]  # why not, one line each (empty when validated)
    best_layer_reference: str
    best_layer: str
    n_test: int
    changes: dict  # layer -> (test AUROC change, 90% CI low, 90% CI high)
    margin: float = EQUIVALENCE_MARGIN

    @property
    def layers_not_equivalent(self) -> tuple[str, ...]:
        """Layers whose change is not shown within +-``margin`` (90% CI not inside it: TOST at 0.05)."""
        return tuple(a for a, (_, lo, hi) in self.changes.items() if not _equivalent(lo, hi, self.margin))

    @property
    def max_abs_change(self) -> tuple[float, str]:
        """The largest |test AUROC change| and its layer."""
        layer = max(self.changes, key=lambda a: abs(self.changes[a][0]))
        return abs(self.changes[layer][0]), layer


def paired_fidelity(
    y_test: np.ndarray,
    label_kind: str,
    reference: dict[str, tuple[float, np.ndarray]],
    candidate: dict[str, tuple[float, np.ndarray]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    min_test: int = MIN_TEST_IMAGES,
    margin: float = EQUIVALENCE_MARGIN,
    alpha: float = EQUIVALENCE_ALPHA,
) -> FidelityVerdict:
    """Judge ``candidate`` against ``reference`` by the module's criterion.

    Each maps a layer to ``(validation AUPRC, test scores)`` of the same probe fitted on that layer's
    features (scores as the predictions files hold them, rows aligned with ``y_test``). Layers are
    taken in ``reference``'s order (a tie of validation AUPRC goes to the shallower layer). A layer
    passes (b) when the ``1 - 2 alpha`` percentile interval of its paired bootstrap AUROC changes
    lies strictly inside ``(-margin, +margin)``: both one-sided tests of TOST reject at ``alpha``.
    """
    from ..metrics.scores import paired_bootstrap

    layers = list(reference)
    if set(candidate) != set(layers):
        raise ValueError(f"the two sets of probes cover different layers: {sorted(set(candidate) ^ set(layers))}")
    best_ref = max(layers, key=lambda a: (reference[a][0], -layers.index(a)))
    best_new = max(layers, key=lambda a: (candidate[a][0], -layers.index(a)))
    changes = {}
    for a in layers:
        boot = paired_bootstrap(
            y_test,
            {"reference": [reference[a][1]], "candidate": [candidate[a][1]]},
            label_kind,
            n_resamples=n_resamples,
            seed=seed,
        )
        diff = boot["candidate"]["auroc"] - boot["reference"]["auroc"]
        change = _auroc(y_test, candidate[a][1], label_kind) - _auroc(y_test, reference[a][1], label_kind)
        lo, hi = np.nanpercentile(diff, [100 * alpha, 100 * (1 - alpha)])
        changes[a] = (float(change), float(lo), float(hi))
    reasons = []
    n_test = len(y_test)
    if n_test < min_test:
        reasons.append(f"{n_test} test images, fewer than the {min_test} the criterion needs")
    if best_new != best_ref:
        reasons.append(f"best layer on validation {best_new}, fp32's is {best_ref}")
    outside = [a for a, (_, lo, hi) in changes.items() if not _equivalent(lo, hi, margin)]
    if outside:
        worst = max(outside, key=lambda a: max(abs(changes[a][1]), abs(changes[a][2])))
        c, lo, hi = changes[worst]
        reasons.append(
            f"{len(outside)} of {len(layers)} layers not shown equivalent within +-{margin:g} test AUROC "
            f"(TOST at {alpha:g}: the {100 * (1 - 2 * alpha):g}% CI of the change must lie inside; e.g. {worst}: "
            f"{c:+.4f} [{lo:+.4f}, {hi:+.4f}])"
        )
    return FidelityVerdict(not reasons, tuple(reasons), best_ref, best_new, n_test, changes, margin)


def _equivalent(lo: float, hi: float, margin: float) -> bool:
    """TOST by the interval: the change's CI lies strictly inside (-margin, +margin) (NaN: not shown)."""
    return bool(-margin < lo and hi < margin)


def _auroc(y: np.ndarray, scores: np.ndarray, label_kind: str) -> float:
    from ..metrics.scores import evaluate

    return float(evaluate(y, scores, label_kind)["auroc"])


# --- the measured choices -------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasuredChoice:
    """One engine+precision measured for a backbone on a hardware class (benchmarks/extract.py)."""

    hardware: str  # runtime.devices.HARDWARE_CLASSES
    backbone: str
    engine: str
    precision: str
    img_per_s: float  # block ends, 224 px, batch 32, inputs in memory, on the measuring machine
    validated: bool  # the criterion's verdict on >= 1,000 test images
    figures: str  # what justified the verdict


# Measured on the 2-core development machine (AMD EPYC, AVX512-BF16, no AMX; cpu-avx512-bf16) with
# `python benchmarks/extract.py --parts large`: 200 training, 300 validation and 1,000 test phantoms
# at 224 px, every cut point, avg+max pooling, one logistic-regression probe per layer. img/s: that
# run's whole `extract` of 1,500 images, one run each while other jobs loaded the machine (load ~10
# on 2 cores): they rank engines roughly, they are not the benchmark's speed table. ResNet-50 and
# DenseNet-121 have no offline ImageNet weights here: ResNet-50 was measured with random weights, on
# which every probe is weak (best validation AUPRC 0.506 at prevalence 0.4, five layers within 0.006)
# and fp32-level perturbations already move some layers' AUROC "beyond chance" (the control fails):
# the criterion cannot validate anything there. DenseNet-121 was not measured (no rows: torch fp32).
# These verdicts were judged by the earlier form of (b), "every layer's 95% CI contains 0". Re-run
# with the equivalence rule on a cpu-amx machine (EfficientNet-Lite0; README), onnx and OpenVINO fp32
# were equivalent on every layer (90% CIs within +-0.0006) and bf16 on none, but the 1e-6 control
# failed on layer 8: its probe chose another C (0.001 vs fp32's 0.01), so no rows are added or changed
# until the candidates' probes are fitted at the reference's hyper-parameters.
_HW = "cpu-avx512-bf16"
MEASURED: tuple[MeasuredChoice, ...] = (
    MeasuredChoice(_HW, "efficientnet_lite0", "torch", "fp32", 7.16, True, "the reference"),
    MeasuredChoice(
        _HW, "efficientnet_lite0", "openvino", "fp32", 9.59, True,
        "best layer 5.1 as fp32's; 0 of 24 layers' CI excludes 0; max |change| 0.0001 (2.2)",
    ),
    MeasuredChoice(
        _HW, "efficientnet_lite0", "torch", "bf16", 16.36, False,
        "7 of 24 layers' CI excludes 0, e.g. 8: +0.0455 [+0.0294, +0.0634]; best layer 5.1 as fp32's",
    ),
    MeasuredChoice(
        _HW, "efficientnet_lite0", "openvino", "bf16", 40.79, False,
        "2 of 24 layers' CI excludes 0 (4.2, 8), e.g. 8: +0.0233 [+0.0038, +0.0423]; best layer 5.1 as fp32's",
    ),
    MeasuredChoice(_HW, "resnet50", "torch", "fp32", 2.04, True, "the reference (random weights)"),
    MeasuredChoice(
        _HW, "resnet50", "openvino", "fp32", 1.8, False,
        "2 of 20 layers' CI excludes 0, e.g. 3.2: -0.0018 [-0.0030, -0.0005]; the 1e-6 control fails too "
        "(1.1: +0.0003 [+0.0000, +0.0006]): random weights, unresolvable",
    ),
    MeasuredChoice(
        _HW, "resnet50", "torch", "bf16", 3.2, False,
        "2 of 20 layers' CI excludes 0, e.g. 4.3: +0.0125 [+0.0062, +0.0198] (random weights)",
    ),
    MeasuredChoice(
        _HW, "resnet50", "openvino", "bf16", 4.9, False,
        "best layer 3.5, fp32's 1.3 (val AUPRC 0.5016 vs 0.5055); 3 of 20 layers' CI excludes 0, e.g. "
        "1.3: +0.0064 [+0.0010, +0.0119] (random weights)",
    ),
)  # fmt: skip


# --- the choice -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    precision: str
    reason: str  # recorded in the store's config


def engine_available(engine: str) -> bool:
    """Whether ``engine``'s runtime is installed (only openvino is optional)."""
    return engine != "openvino" or importlib.util.find_spec("openvino") is not None


def choose_engine(
    engine: str,
    precision: str,
    backbone: str,
    device: str,
    *,
    log: Callable[[str], None] | None = None,
    measured: tuple[MeasuredChoice, ...] | None = None,
) -> EngineChoice:
    """The engine and precision to extract ``backbone`` with on ``device``; ``auto`` in either is
    resolved from the validated rows of ``MEASURED`` for this hardware class (the fastest whose
    engine is installed), else to torch and fp32."""
    check_choice("--engine", engine, ENGINE_CHOICES)
    if precision != "auto" and engine != "openvino":
        resolve_precision(precision, device)  # checks it (fp16 needs CUDA); openvino checks its own
    if "auto" not in (engine, precision):
        return EngineChoice(engine, precision, "as asked")
    hardware = hardware_class(device)
    rows = [
        r
        for r in (MEASURED if measured is None else measured)
        if r.validated
        and (r.hardware, r.backbone) == (hardware, backbone)
        and engine in ("auto", r.engine)
        and precision in ("auto", r.precision)
    ]
    rows.sort(key=lambda r: -r.img_per_s)
    for r in rows:
        if engine_available(r.engine):
            return EngineChoice(
                r.engine,
                r.precision,
                f"auto: validated for {backbone} on {hardware}, fastest measured ({r.img_per_s:g} img/s): {r.figures}",
            )
        if log:
            log(f"auto: {r.engine} {r.precision} is validated and faster here but not installed; {OPENVINO_EXTRA}")
    return EngineChoice(
        "torch" if engine == "auto" else engine,
        "fp32" if precision == "auto" else precision,
        f"auto: no validated choice for {backbone} on {hardware}: the fp32 reference",
    )
