"""Hard inputs, fuzzed (a few hundred cases here; `python benchmarks/fuzz.py` runs >= 10,000)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tlmic_feats.testing.fuzz import (
    check_chest_case,
    check_csv_case,
    check_image_case,
    check_npz_case,
    chest_cases,
    csv_cases,
    image_cases,
    npz_cases,
)

FUZZ = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(image_cases())
def test_image_decoder_fuzz(case):
    with tempfile.TemporaryDirectory() as d:
        check_image_case(case, Path(d))


@FUZZ
@given(csv_cases())
def test_csv_manifest_fuzz(case):
    with tempfile.TemporaryDirectory() as d:
        check_csv_case(case, Path(d))


@settings(max_examples=40, deadline=5000, derandomize=True)
@given(npz_cases())
def test_npz_fuzz(case):
    with tempfile.TemporaryDirectory() as d:
        check_npz_case(case, Path(d))


@FUZZ
@given(chest_cases())
def test_chest_label_files_fuzz(case):
    with tempfile.TemporaryDirectory() as d:
        check_chest_case(case, Path(d))
