"""Run directories, one set of rules for probe runs, finetuning runs and studies: their ids, and
claiming a directory (start a run there, resume the same run, or refuse one that holds another).

A directory holds one run, recorded in a JSON file (``run.json``, or ``study.json``). Claiming it
with a record compares the two: the same run resumes, another is refused naming every differing key
and both values (``config.lr (0.001 -> 0.01)``), and ``overwrite`` replaces it. Two spellings of one
existing path (``study`` and ``/home/me/study``) are the same value. A directory that is not empty
and holds no record is never used.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .errors import UsageError
from .files import write_json


def subset_tag(fraction: float, seed: int) -> str:
    """``f0.1-s0``: the training subset of a run (a fraction of the training split, and its seed)."""
    return f"f{fraction:g}-s{seed}"


_ADDRESS = re.compile(r"^\d+(\.\d+)?$")


def layer_label(address: str) -> str:
    """``L3.10``: a cut-point address as tables and file names write it. Bare, ``3.10`` reads as the
    number 3.1 in pandas (or a spreadsheet), the same as cut point ``3.1``; ``L3.10`` stays text.
    Anything that is not a numeric address (``all``, a baseline's name) is written as it is."""
    return f"L{address}" if _ADDRESS.match(str(address)) else str(address)


def address_from_label(text: str) -> str:
    """The address a :func:`layer_label` names (``L3.10`` -> ``3.10``); other text unchanged."""
    text = str(text).strip()
    return text[1:] if text[:1] in ("L", "l") and _ADDRESS.match(text[1:]) else text


def probe_cell_id(
    layer: str, model: str, fraction: float, seed: int, control: str = "none", permutation: int = -1
) -> str:
    """``L3-logreg-f0.1-s0`` (``-perm4`` for draw 4 of the shuffle control): one probe cell's files in a
    probe run."""
    return f"{layer_label(layer)}-{model}-{subset_tag(fraction, seed)}" + (
        f"-perm{permutation}" if control != "none" else ""
    )


def finetune_run_name(data_name: str, backbone: str, weights: str, address: str, fraction: float, seed: int) -> str:
    """A finetuning run's default directory name: what it trains, on what, cut where."""
    return f"finetune-{data_name}-{backbone}-{weights}-t{address}-{subset_tag(fraction, seed)}"


def study_run_id(arm: str, fraction: float, seed: int) -> str:
    """``t3-f0.1-s0``, ``full-f1-s2``: a finetuning run inside a study."""
    return f"{arm}-{subset_tag(fraction, seed)}"


def same_path(a, b) -> bool:
    """Whether two strings name one existing file or folder (relative to where one stands, absolute,
    through ``~`` or a link): a run given ``--out study`` once and ``--out /home/me/study`` later."""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    try:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except (OSError, ValueError):
        return False


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Every key (dotted through nested dicts) whose value differs, with both values; two spellings of
    one existing path (:func:`same_path`) do not differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb and not same_path(va, vb):
            out.append(f"{prefix}{k} ({va!r} -> {vb!r})")
    return out


def claim_run_dir(
    out: Path,
    record: dict,
    *,
    what: str,
    record_file: str = "run.json",
    resume: bool = True,
    overwrite: bool = False,
    ignore: tuple[str, ...] = (),
    replace_hint: str = "choose another --out or delete it",
) -> bool:
    """Claim ``out`` for the run ``record`` describes; True when it resumes the same run there.

    Only the keys of ``record`` are compared (a record file may hold more, such as a study's
    progress), except the dotted keys in ``ignore`` (settings that change how a run is kept, not
    what it computes). Without ``resume`` an existing run is refused unless ``overwrite``.
    """
    record = json.loads(json.dumps(record))  # as the file holds it (tuples as lists), so that records compare
    path = out / record_file
    if path.is_file():
        if overwrite:
            shutil.rmtree(out)
        else:
            old = json.loads(path.read_text())
            if not resume:
                raise UsageError(
                    f"run directory {out} holds a {what}; pass --resume to continue it or --overwrite to replace it"
                )
            diff = [d for d in diff_keys({k: old.get(k) for k in record}, record) if d.split(" ")[0] not in ignore]
            if diff:
                raise UsageError(f"{out} holds another {what} (differs in: {', '.join(diff)}); {replace_hint}")
            return True
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} exists and is not a {what} directory; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return False
