"""Options are declared once, as config fields: the command line agrees with them (flag, default,
choices, help) on every command, errors name the field (and the flag from the command line), and
presets and nested configs compose."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tlmic_cli.main import cli
from tlmic_cli.options import config_fields

from tlmic_feats import DataConfig
from tlmic_feats.features.config import ExtractConfig
from tlmic_feats.features.similarity_run import SimilarityConfig
from tlmic_feats.finetune.config import FinetuneConfig
from tlmic_feats.finetune.training import TrainingConfig
from tlmic_feats.probes.config import ProbeConfig
from tlmic_feats.runtime.errors import UsageError
from tlmic_feats.runtime.options import flag_of, from_flat, option_meta, replace_flat
from tlmic_feats.study.config import PRESETS, StudyConfig

COMMANDS = {
    "extract": ExtractConfig,
    "probe": ProbeConfig,
    "finetune": FinetuneConfig,
    "study": StudyConfig,
    "similarity": SimilarityConfig,
}
# What each command needs typed to build its config, as field values
REQUIRED = {"probe": {"store": "s.zarr"}, "similarity": {"store": "s.zarr"}}


def command(name: str) -> click.Command:
    return cli.get_command(click.Context(cli), name)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_field_is_an_option_with_its_declared_flag_default_choices_and_help(name):
    cls = COMMANDS[name]
    params = {p.name: p for p in command(name).params}
    fields = config_fields(cls)
    assert fields, cls
    for path, f, owner in fields:
        meta = option_meta(f)
        p = params.get(f.name)
        assert p is not None, f"{name}: field {'.'.join(path)} has no option"
        assert flag_of(f) in p.opts + p.secondary_opts
        assert p.help == (meta["help"] or None), f"{name} {flag_of(f)}: help differs from the field's"
        assert meta["help"], f"{owner.__name__}.{f.name} has no help line"
        if meta["choices"] is not None and meta["parse"] is None:
            assert tuple(p.type.choices) == tuple(str(c) for c in meta["choices"])
    # the command's defaults build the class's defaults (data and required fields aside)
    required = REQUIRED.get(name, {"data": DataConfig("cxr")})
    args = [a for k, v in required.items() for a in (f"--{k}", v.path if k == "data" else v)]
    ctx = command(name).make_context(name, args)
    built = from_flat(cls, **{path[-1]: ctx.params[path[-1]] for path, _f, _o in fields})
    reference = from_flat(cls, **required)
    assert built == reference


def test_every_field_with_literal_type_declares_the_same_choices():
    for cls in (*COMMANDS.values(), TrainingConfig, DataConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if typing.get_origin(hints[f.name]) is typing.Literal:
                assert option_meta(f)["choices"] == typing.get_args(hints[f.name]), (cls, f.name)


def test_one_name_per_concept_across_commands():
    for name in ("extract", "probe", "layers"):
        assert any("--layers" in p.opts for p in command(name).params), name
    for name in ("probe", "study"):
        assert any("--seeds" in p.opts for p in command(name).params), name
    assert any("--fractions" in p.opts for p in command("probe").params)
    # training options are declared once, and finetuning and the study share them
    assert {p.name for p in command("finetune").params} >= {f.name for f in dataclasses.fields(TrainingConfig)}
    assert {p.name for p in command("study").params} >= {f.name for f in dataclasses.fields(TrainingConfig)}
    assert FinetuneConfig(DataConfig("x")).training == StudyConfig(DataConfig("x")).training


def test_errors_name_the_field_from_python_and_the_flag_from_the_command_line(tmp_path):
    with pytest.raises(UsageError, match=r"^dropout 2\.0 is out of range: must be <= 1$"):
        FinetuneConfig(DataConfig("x"), dropout=2.0).validate()
    with pytest.raises(UsageError, match=r"^lr -1\.0 is out of range: must be > 0$"):
        from_flat(FinetuneConfig, data=DataConfig("x"), lr=-1.0).validate()
    with pytest.raises(UsageError, match=r"^baselines 'cbr-huge' is not valid; valid: cbr-tiny"):
        StudyConfig(DataConfig("x"), baselines=("cbr-huge",)).validate()
    with pytest.raises(UsageError, match="FinetuneConfig has no option stepz; valid: "):
        from_flat(FinetuneConfig, data=DataConfig("x"), stepz=3)
    (tmp_path / "a").mkdir()
    r = CliRunner().invoke(cli, ["study", "--data", str(tmp_path / "a"), "--baselines", "cbr-huge", "--plan"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith(
        "tlmic: error: --baselines 'cbr-huge' is not valid; valid: cbr-tiny"
    ), r.output
    r = CliRunner().invoke(cli, ["probe", "--store", str(tmp_path / "s.zarr"), "--jobs", "-1"])
    assert r.exit_code == 2 and r.output.strip() == "tlmic: error: --jobs (n_jobs) -1 is out of range: must be >= 0"


def test_paths_are_accepted_wherever_strings_are_and_record_as_strings(tmp_path):
    c = ProbeConfig(store=tmp_path / "s.zarr", out=tmp_path / "out")
    assert c.store == str(tmp_path / "s.zarr") and c.out == str(tmp_path / "out")
    assert c == ProbeConfig(store=str(tmp_path / "s.zarr"), out=str(tmp_path / "out"))
    json.dumps(c.grid_key)
    d = DataConfig(Path("cxr"))
    assert d.path == "cxr"
    json.dumps(StudyConfig(d, out=tmp_path).results_key)


def test_from_flat_and_replace_flat_reach_nested_fields():
    c = from_flat(FinetuneConfig, data=DataConfig("x"), truncate="3", steps=20, lr=1e-4)
    assert (c.truncate, c.training.steps, c.training.lr) == ("3", 20, 1e-4)
    d = replace_flat(c, patience=2, dropout=0.1)
    assert (d.training.patience, d.training.steps, d.dropout) == (2, 20, 0.1)
    assert c.training.patience == 5  # frozen: the original is unchanged


def test_presets_set_values_and_typed_options_win(monkeypatch, tmp_path):
    quick = StudyConfig.from_preset("quick", DataConfig("x"))
    assert quick.fractions == PRESETS["quick"]["fractions"] and quick.training.epochs == 4
    assert quick.baselines == ()
    assert StudyConfig.from_preset("standard", DataConfig("x")) == StudyConfig(DataConfig("x"))
    mixed = StudyConfig.from_preset("quick", DataConfig("x"), seeds=5, lr=0.01, top_units=1)
    assert (mixed.seeds, mixed.fractions, mixed.training.lr, mixed.training.epochs) == (5, quick.fractions, 0.01, 4)
    assert mixed.top_units == 1  # a typed value equal to the standard default still wins
    with pytest.raises(UsageError, match="preset 'fast' is not valid; valid: quick, standard, paper"):
        StudyConfig.from_preset("fast", DataConfig("x"))

    seen = []
    import tlmic_feats.study.plan as plan

    monkeypatch.setattr(plan, "plan_study", lambda config, **kw: seen.append(config) or "plan")
    (tmp_path / "a").mkdir()
    args = ["study", "--data", str(tmp_path / "a"), "--preset", "quick", "--seeds", "2", "--lr", "0.01",
            "--top-units", "1", "--plan"]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    c = seen[0]
    assert (c.seeds, c.fractions, c.training.lr, c.training.epochs, c.top_units) == (2, (0.05, 1.0), 0.01, 4, 1)
    assert c == StudyConfig.from_preset("quick", c.data, seeds=2, lr=0.01, top_units=1)
    assert "next: " in r.output


def test_from_record_rebuilds_a_config_from_its_run_json():
    from tlmic_feats.runtime.options import from_record

    c = from_flat(FinetuneConfig, data=DataConfig("x", label_columns=("a", "b")), truncate="3", steps=7, lr=0.01)
    for config in (c, dataclasses.replace(c, augment=None)):
        recorded = json.loads(json.dumps(dataclasses.asdict(config)))  # as run.json holds it: tuples as lists
        assert from_record(FinetuneConfig, recorded) == config
    recorded["training"].pop("patience")  # a run recorded before a field existed: its default
    recorded["retired_option"] = 1  # ... or after one was removed: ignored
    assert from_record(FinetuneConfig, recorded).training.patience == TrainingConfig().patience
