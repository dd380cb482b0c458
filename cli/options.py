"""Options shared by several commands, and their conversion to library configs."""

from __future__ import annotations

import functools

import click

from tlmic_feats.data.chestxray import BLANK_POLICIES, UNCERTAIN_POLICIES, VIEWS
from tlmic_feats.data.readers import FORMATS, DataConfig
from tlmic_feats.runtime.devices import PRECISIONS

_DATA_OPTIONS = [
    click.option(
        "--data",
        "data_path",
        required=True,
        type=click.Path(exists=True),
        help="Dataset: an ImageFolder directory (optionally train/ val/ test/), a CSV manifest, or a MedMNIST .npz.",
    ),
    click.option(
        "--format", "data_format", type=click.Choice(FORMATS), default="auto", show_default=True, help="Dataset format."
    ),
    click.option("--path-column", default="path", show_default=True, help="CSV: column of image paths."),
    click.option(
        "--label-columns",
        default="",
        help="CSV: comma-separated label column(s) (default: 'label', else every other column).",
    ),
    click.option(
        "--split-column", default="split", show_default=True, help="CSV: split column (train/val/test), if any."
    ),
    click.option("--patient-column", default="patient_id", show_default=True, help="CSV: patient-id column, if any."),
    click.option("--id-column", default="", help="CSV: image-id column (default: the path)."),
    click.option(
        "--image-root", default="", help="CSV: folder image paths are relative to (default: the CSV's folder)."
    ),
    click.option("--positive", "positive_class", default="", help="Binary data: the positive class name."),
    click.option("--patient-regex", default="", help=r"Patient id from each file name, e.g. 'person(\d+)_'."),
    click.option("--split-seed", default=0, show_default=True, help="Seed of the split made when the data has none."),
    click.option(
        "--uncertain",
        type=click.Choice(UNCERTAIN_POLICIES),
        default="ignore",
        show_default=True,
        help="CheXpert -1 (uncertain) labels: U-Ones, U-Zeros, or U-Ignore (masked).",
    ),
    click.option(
        "--blank",
        type=click.Choice(BLANK_POLICIES),
        default="zeros",
        show_default=True,
        help="CheXpert blank labels: negative, or missing (masked).",
    ),
    click.option(
        "--views",
        type=click.Choice(VIEWS),
        default="frontal",
        show_default=True,
        help="CheXpert views to keep.",
    ),
    click.option("--allow-outside-root", is_flag=True, help="Allow manifest paths outside the data root."),
    click.option(
        "--dicom-frame", default=-1, show_default=True, help="Multi-frame DICOM: the frame to use (-1: refuse)."
    ),
]


def float_list(ctx, param, value):
    """A click callback: ``"0.05,0.1,1.0"`` -> ``(0.05, 0.1, 1.0)``."""
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0.05,0.1,1.0") from None


def seeds_option(help: str = "Seeds: a count (3: seeds 0, 1, 2) or the seeds themselves (3,4,5)."):
    """``--seeds 3`` or ``--seeds 3,4,5``, so two independent reruns can be made and compared."""

    def parse(ctx, param, value):
        from tlmic_feats.runtime.errors import UsageError
        from tlmic_feats.runtime.seeds import parse_seeds

        try:
            return parse_seeds(str(value))
        except UsageError as e:
            raise click.BadParameter(str(e).removeprefix("--seeds ")) from None

    return click.option("--seeds", default="3", show_default=True, callback=parse, help=help)


def backbone_option(f):
    """``--backbone``, the same on every command that builds a network."""
    return click.option(
        "--backbone",
        default="resnet50",
        show_default=True,
        help="Curated name, timm:NAME or tv:NAME (`tlmic backbones PATTERN`).",
    )(f)


def precision_option(default: str, help: str = ""):
    return click.option(
        "--precision", type=click.Choice(PRECISIONS), default=default, show_default=True, help=help or None
    )


def data_options(f):
    for opt in reversed(_DATA_OPTIONS):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(*args, **kw):
        kw["data"] = DataConfig(
            path=kw.pop("data_path"),
            format=kw.pop("data_format"),
            path_column=kw.pop("path_column"),
            label_columns=tuple(c.strip() for c in kw.pop("label_columns").split(",") if c.strip()),
            split_column=kw.pop("split_column"),
            patient_column=kw.pop("patient_column"),
            id_column=kw.pop("id_column"),
            image_root=kw.pop("image_root"),
            positive_class=kw.pop("positive_class"),
            patient_regex=kw.pop("patient_regex"),
            split_seed=kw.pop("split_seed"),
            uncertain=kw.pop("uncertain"),
            blank=kw.pop("blank"),
            views=kw.pop("views"),
            allow_outside_root=kw.pop("allow_outside_root"),
            dicom_frame=kw.pop("dicom_frame"),
        )
        return f(*args, **kw)

    return wrapper


def budget_options(f):
    """The step budget of finetuning (``tlmic finetune`` and ``tlmic study``; see tlmic_feats.finetune.budget)."""
    from tlmic_feats.finetune.budget import MIN_STEPS

    options = [
        click.option(
            "--steps",
            default=0,
            show_default=True,
            help="Optimizer steps per run (0: max(--min-steps, --epochs x steps per epoch)).",
        ),
        click.option(
            "--epochs",
            default=20,
            show_default=True,
            help="Passes over the training subset that the default budget gives data-rich runs.",
        ),
        click.option(
            "--min-steps",
            default=MIN_STEPS,
            show_default=True,
            help="The default budget's floor, so that small subsets get enough steps to learn.",
        ),
        click.option("--eval-every", default=0, show_default=True, help="Steps between validations (0: 20 per run)."),
        click.option(
            "--patience", default=5, show_default=True, help="Evaluations without improvement before stopping."
        ),
        click.option("--batch-size", default=32, show_default=True, help="Images per step (per process)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


input_size_option = click.option(
    "--input-size",
    default=0,
    show_default=True,
    help="Input side in px (0: the weights' own; e.g. 128 for fast CPU runs; the resize follows).",
)
