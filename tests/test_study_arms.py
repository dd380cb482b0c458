"""A study arm as a typed value: the names finished studies wrote on disk read back to the same arm
and name, bad names fail in one line with the valid ones, and each kind trains what it says."""

from __future__ import annotations

import pytest

from tlmic_feats.data.readers import DataConfig
from tlmic_feats.runtime.errors import UsageError
from tlmic_feats.study.arms import Arm, Run, finetune_config
from tlmic_feats.study.config import BASELINES, StudyConfig

# Every name a study writes: run directories, study.json, results.csv and calibration.json keys.
ON_DISK = ["t1", "t3", "t3.1", "t3.10", "t2.4", "full", "scratch", *BASELINES, "probe-logreg", "probe-lightgbm"]


@pytest.mark.parametrize("name", ON_DISK)
def test_every_on_disk_name_reads_back_to_itself(name):
    arm = Arm.parse(name)
    assert str(arm) == name and Arm.parse(arm) is arm


def test_names_read_as_their_kind_address_and_name():
    assert Arm.parse("t3.10") == Arm("truncated", "3.10") != Arm.parse("t3.1")  # not the number 3.1
    assert Arm.parse("full") == Arm("full") and Arm.parse("scratch") == Arm("scratch")
    assert Arm.parse("cbr-tiny") == Arm("baseline", name="cbr-tiny")
    assert Arm.parse("layerwise").network == Arm("full") and Arm.parse("scratch").network == Arm("full")
    assert Arm.parse("hybrid").network == Arm("baseline", name="hybrid")
    assert Arm.parse("probe-logreg") == Arm("probe", name="logreg")


@pytest.mark.parametrize("bad", ["t", "tx", "t3.4.5", "probe-", "cbr-huge", "Full", ""])
def test_a_bad_name_is_one_line_with_the_valid_ones(bad):
    with pytest.raises(UsageError) as e:
        Arm.parse(bad)
    msg = str(e.value)
    assert "\n" not in msg and repr(bad) in msg and "valid: t<cut point>" in msg and "cbr-tiny" in msg


def test_inconsistent_arms_are_refused():
    bad = (("truncated", "", ""), ("full", "3", ""), ("baseline", "", "cbr-huge"), ("probe", "", ""), ("t", "3", ""))
    for kind, address, name in bad:
        with pytest.raises(UsageError):
            Arm(kind, address, name)


def test_runs_keep_the_directory_names_and_study_json_records_of_finished_studies():
    # a record as study.json held it before arms were typed (asdict of a run with a string arm)
    record = {"stage": "stage2", "arm": "t3.10", "fraction": 0.05, "seed": 2}
    run = Run.from_record({**record, "status": "done", "seconds": 4.2})
    assert run == Run("stage2", Arm("truncated", "3.10"), 0.05, 2) and run.record() == record
    assert run.id == "t3.10-f0.05-s2"
    assert Run("baseline", Arm.parse("cbr-tiny"), 1.0, 0).id == "cbr-tiny-f1-s0"


def test_the_report_order_is_probes_truncated_shallow_to_deep_full_scratch_baselines():
    want = ["probe-lightgbm", "probe-logreg", "t1", "t3.1", "t3.10", "t3", "full", "scratch", "cbr-tiny", "hybrid"]
    shuffled = ["hybrid", "t3", "full", "probe-logreg", "t3.10", "cbr-tiny", "scratch", "t1", "probe-lightgbm", "t3.1"]
    assert [str(a) for a in sorted(map(Arm.parse, shuffled), key=Arm.sort_key)] == want


def test_each_kind_trains_what_it_says(tmp_path):
    config = StudyConfig(data=DataConfig(str(tmp_path)), lpft="none")

    def fc(name: str):
        return finetune_config(config, Run("stage1", Arm.parse(name), 0.1, 1), tmp_path)

    assert (fc("t3.10").truncate, fc("t3.10").weights, fc("t3.10").arch) == ("3.10", config.weights, "truncated")
    assert fc("full").truncate == "all" and fc("full").weights == config.weights
    assert (fc("scratch").truncate, fc("scratch").weights) == ("all", "random")
    assert (fc("cbr-small").arch, fc("cbr-small").weights) == ("cbr-small", "random")
    assert fc("hybrid").arch == "hybrid"
    assert fc("t2").out == str(tmp_path / "runs" / "t2-f0.1-s1") and (fc("t2").fraction, fc("t2").seed) == (0.1, 1)
    with pytest.raises(UsageError, match="probe-logreg is not finetuned"):
        fc("probe-logreg")
