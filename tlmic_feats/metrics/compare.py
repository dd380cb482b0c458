"""``tlmic compare`` as a function: two models, or two arms' training runs, on the same test images.

:func:`compare_runs` takes each side as a predictions file or a finetuning run directory (its
``predictions.csv``):

* one on each side: *these two trained models* on these test images, AUROC by DeLong's test and
  AUPRC by a paired bootstrap (:func:`~tlmic_feats.metrics.paired.compare_prediction_files`); a
  rerun's training variance is not included.
* a list on each side (one file per training run, paired by order: the same seed): *the arms*, over
  training runs and test images, with a verdict (A better, B better, equivalent within ``rope``,
  inconclusive; :func:`~tlmic_feats.metrics.verdicts.compare_prediction_groups`).

The result, a :class:`Comparison`, holds the full record (:attr:`Comparison.result`, what
``tlmic compare --json`` prints) and one row per metric as a DataFrame (:meth:`Comparison.to_pandas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import UsageError
from .verdicts import DEFAULT_ROPE, Verdict

COMPARISON_COLUMNS = (
    "metric",
    "a",
    "b",
    "value_a",
    "value_b",
    "diff",
    "ci95_lo",
    "ci95_hi",
    "p",
    "method",
    "verdict",
    "runs_a",
    "runs_b",
    "n_images",
    "split",
)


@dataclass
class Comparison:
    """What :func:`compare_runs` found, A minus B.

    ``a`` and ``b`` name the sides; ``paths_a`` / ``paths_b`` are their predictions files; ``groups``
    is True for a comparison over training runs (then :attr:`verdicts` holds one
    :class:`~tlmic_feats.metrics.verdicts.Verdict` per metric); ``result`` is the full record.
    """

    a: str
    b: str
    paths_a: list[Path]
    paths_b: list[Path]
    groups: bool
    result: dict

    @property
    def verdicts(self) -> dict[str, Verdict]:
        """``{metric: Verdict}`` of a comparison over training runs (empty for two models)."""
        return dict(self.result.get("verdicts", {}))

    def to_pandas(self):
        """One row per metric (``auroc``, ``auprc``) as a :class:`pandas.DataFrame`, columns
        :data:`COMPARISON_COLUMNS`: ``metric``, ``a`` and ``b`` (the sides' names), ``value_a`` and
        ``value_b`` (each side's metric; over training runs, the mean of its runs), ``diff`` (A minus
        B), ``ci95_lo`` and ``ci95_hi`` (its 95% interval), ``p`` (two models: DeLong's or the paired
        bootstrap's two-sided p-value; over runs: the verdict's p-value, Holm-adjusted when
        primary), ``method``, ``verdict`` (``a_better``, ``b_better``, ``equivalent``,
        ``inconclusive``, ``single_seed``; empty for two models, which a verdict about training
        procedures cannot be drawn from), ``runs_a`` and ``runs_b`` (files per side), ``n_images``
        and ``split``."""
        import pandas as pd

        r = self.result
        common = {"runs_a": len(self.paths_a), "runs_b": len(self.paths_b), "n_images": r["n"], "split": r["split"]}
        rows = []
        if self.groups:
            for metric, v in r["verdicts"].items():
                rows.append(
                    {
                        "metric": metric,
                        "a": self.a,
                        "b": self.b,
                        "value_a": v.mean_a,
                        "value_b": v.mean_b,
                        "diff": v.diff,
                        "ci95_lo": v.ci95[0],
                        "ci95_hi": v.ci95[1],
                        "p": v.p_adjusted,
                        "method": "over training runs and test images (two-way bootstrap)",
                        "verdict": v.verdict,
                        **common,
                    }
                )
        else:
            for metric, method in (("auroc", "DeLong"), ("auprc", "paired bootstrap")):
                m = r[metric]
                rows.append(
                    {
                        "metric": metric,
                        "a": self.a,
                        "b": self.b,
                        "value_a": m["a"],
                        "value_b": m["b"],
                        "diff": m["diff"],
                        "ci95_lo": m["ci"][0],
                        "ci95_hi": m["ci"][1],
                        "p": m["p"],
                        "method": method,
                        "verdict": "",
                        **common,
                    }
                )
        return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def predictions_path(side: str | Path) -> Path:
    """The predictions file ``side`` names: the file itself, or a run directory's ``predictions.csv``."""
    path = Path(side)
    if path.is_dir():
        if (path / "predictions.csv").is_file():
            return path / "predictions.csv"
        raise UsageError(
            f"{path} is a folder without predictions.csv; give a predictions file or a finetuning run directory"
        )
    if not path.is_file():
        raise UsageError(f"predictions file {path} does not exist")
    return path


def side_name(path: Path) -> str:
    """A side's name: its file's stem, or its run directory's name for a ``predictions.csv``."""
    return path.parent.name if path.name == "predictions.csv" and path.parent.name else path.stem


def compare_runs(
    a: str | Path | list[str | Path],
    b: str | Path | list[str | Path],
    *,
    split: str = "test",
    paired: bool = True,
    rope: float = DEFAULT_ROPE,
    n_resamples: int = 2000,
    random_state: int = 0,
    names: tuple[str, str] | None = None,
) -> Comparison:
    """Compare predictions on the same images, A minus B (``tlmic compare``).

    Parameters
    ----------
    a, b : a predictions file or a finetuning run directory each (two trained models), or a list of
        them each (one per training run: the arms over training runs, with a verdict).
    split : the split the files score (``test`` or ``val``).
    paired : lists only: ``a[r]`` and ``b[r]`` share seed ``r`` (and its training subset); False for
        independent seed sets, which may then differ in number.
    rope : lists only: the region of practical equivalence, on the metric's scale.
    n_resamples : bootstrap resamples (test images, and training runs for lists).
    random_state : seed of the resamples.
    names : the sides' names (default: two models by their files or run directories, lists "A", "B").

    Returns
    -------
    Comparison
        ``.to_pandas()``: one row per metric; ``.result``: the full record.

    Raises
    ------
    UsageError
        A file that does not exist, a folder without ``predictions.csv``, paired lists of unequal length.
    DataFormatError
        Files that score different images, or give them different labels.

    Examples
    --------
    >>> compare_runs("runs/t3/", "runs/full/").to_pandas()                      # doctest: +SKIP
    >>> compare_runs(["t3-s0/", "t3-s1/", "t3-s2/"], ["full-s0/", "full-s1/", "full-s2/"])  # doctest: +SKIP
    """
    groups = isinstance(a, (list, tuple)) or isinstance(b, (list, tuple))
    side_a = [predictions_path(p) for p in (a if isinstance(a, (list, tuple)) else [a])]
    side_b = [predictions_path(p) for p in (b if isinstance(b, (list, tuple)) else [b])]
    if groups:
        from .verdicts import compare_prediction_groups

        name_a, name_b = names or ("A", "B")
        result = compare_prediction_groups(
            side_a, side_b, split=split, paired=paired, rope=rope, n_resamples=n_resamples,
            random_state=random_state, names=(name_a, name_b),
        )  # fmt: skip
    else:
        from .paired import compare_prediction_files

        name_a, name_b = names or (side_name(side_a[0]), side_name(side_b[0]))
        result = compare_prediction_files(side_a[0], side_b[0], split=split, n_resamples=n_resamples, seed=random_state)
    return Comparison(name_a, name_b, side_a, side_b, groups, result)
