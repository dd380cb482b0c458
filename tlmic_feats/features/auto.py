"""What ``--engine auto`` and ``--precision auto`` extract with: the fidelity criterion, the table of
measured choices it judged, and the choice for a backbone on this hardware.

The criterion (:func:`paired_fidelity`). A reduced precision (or another engine) is validated for a
backbone on a hardware class when, on a test set of at least ``MIN_TEST_IMAGES`` images, probes
fitted on its features, against the same probes on torch fp32 features,

(a) choose the same best layer on validation (the probe report's rule: the highest validation
    AUPRC), and
(b) on every layer, the paired bootstrap 95% CI of the test-AUROC change (the same test resamples
    for both) contains 0.

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


# --- the criterion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidelityVerdict:
    """The criterion's outcome for one engine+precision against the fp32 reference."""

    validated: bool
    reasons: tuple[str, ...]  # why not, one line each (empty when validated)
    best_layer_reference: str
    best_layer: str
    n_test: int
    changes: dict  # layer -> (test AUROC change, CI low, CI high)

    @property
    def layers_shifted(self) -> tuple[str, ...]:
        """Layers whose paired 95% CI of the AUROC change excludes 0."""
        return tuple(a for a, (_, lo, hi) in self.changes.items() if lo > 0 or hi < 0)

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
) -> FidelityVerdict:
    """Judge ``candidate`` against ``reference`` by the module's criterion.

    Each maps a layer to ``(validation AUPRC, test scores)`` of the same probe fitted on that layer's
    features (scores as the predictions files hold them, rows aligned with ``y_test``). Layers are
    taken in ``reference``'s order (a tie of validation AUPRC goes to the shallower layer).
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
        lo, hi = np.nanpercentile(diff, [2.5, 97.5])
        changes[a] = (float(change), float(lo), float(hi))
    reasons = []
    n_test = len(y_test)
    if n_test < min_test:
        reasons.append(f"{n_test} test images, fewer than the {min_test} the criterion needs")
    if best_new != best_ref:
        reasons.append(f"best layer on validation {best_new}, fp32's is {best_ref}")
    shifted = [a for a, (_, lo, hi) in changes.items() if lo > 0 or hi < 0]
    if shifted:
        worst = max(shifted, key=lambda a: abs(changes[a][0]))
        c, lo, hi = changes[worst]
        reasons.append(
            f"{len(shifted)} of {len(layers)} layers change test AUROC beyond chance (e.g. {worst}: "
            f"{c:+.4f} [{lo:+.4f}, {hi:+.4f}])"
        )
    return FidelityVerdict(not reasons, tuple(reasons), best_ref, best_new, n_test, changes)


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


# Measured on the 2-core development machine (AMD EPYC, AVX512-BF16, no AMX).
MEASURED: tuple[MeasuredChoice, ...] = ()


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
