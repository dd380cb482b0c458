"""Packaging: the dependency ranges, the tested pins, the extras errors name, `python -m tlmic`, and
optional Dask."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from tlmic_cli.main import cli

from .conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the ranges are the same on 3.10


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *(r for rs in extras.values() for r in rs)]]


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_requirement_admits_its_tested_pins():
    pins = _pins((REPO / "constraints.txt").read_text())
    # the oldest end, as `make test-oldest` installs it
    oldest_line = re.search(r"^OLDEST_PINS := (.+)$", (REPO / "Makefile").read_text(), re.M)
    oldest = _pins("\n".join(oldest_line.group(1).split()))
    assert set(oldest) == {"torch", "torchvision"} and oldest["torch"] != pins["torch"]
    checked = set()
    for req in _requirements():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "tlmic":  # the test extra's own extras
            continue
        assert name in pins, f"{req} has no tested version in constraints.txt"
        for tested in {pins[name], oldest.get(name, pins[name])}:
            assert req.specifier.contains(tested, prereleases=True), f"{req} does not admit the tested {tested}"
        checked.add(name)
    assert {"torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "dask", "openvino"} <= checked


def test_torch_and_torchvision_are_ranges():
    deps = {Requirement(r).name: Requirement(r) for r in _project()["dependencies"]}
    for name in ("torch", "torchvision"):
        operators = {s.operator for s in deps[name].specifier}
        assert operators == {">=", "<"}, deps[name]  # both ends, neither pinned


def test_every_extra_named_in_messages_and_docs_exists():
    extras = set(_project()["optional-dependencies"])
    assert {"gpu", "cluster", "openvino", "docs", "test"} <= extras
    files = [*REPO.glob("tlmic_feats/**/*.py"), *REPO.glob("cli/**/*.py"), *REPO.glob("docs/**/*.md")]
    named = {}
    for path in [*files, REPO / "README.md"]:
        for group in re.findall(r"tlmic\[([a-z0-9_,-]+)\]", path.read_text()):
            for extra in group.split(","):
                named.setdefault(extra, path.relative_to(REPO))
    assert {"gpu", "cluster", "openvino"} <= set(named)
    unknown = {extra: where for extra, where in named.items() if extra not in extras}
    assert not unknown, f"extras named but not declared in pyproject.toml: {unknown}"


def test_python_m_tlmic_runs_the_cli_without_importing_torch(tmp_path):
    # run elsewhere than the repository: the installed package, not the folder, answers
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tlmic", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: tlmic [OPTIONS] COMMAND") and " extract " in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "tlmic_cli.main" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "torchvision", "timm", "numpy", "dask"))
    assert not heavy, heavy
    bad = subprocess.run([sys.executable, "-m", "tlmic", "nope"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["tlmic: error: No such command 'nope'."]


def test_import_tlmic_is_the_library_api():
    import tlmic
    import tlmic_feats

    assert tlmic.__all__ == tlmic_feats.__all__ and tlmic.__version__ == tlmic_feats.__version__
    assert tlmic.from_flat is tlmic_feats.from_flat and tlmic.CacheItem is tlmic_feats.CacheItem
    assert set(tlmic.__all__) <= set(dir(tlmic))
    with pytest.raises(AttributeError, match="module 'tlmic' has no attribute 'nope'"):
        tlmic.nope  # noqa: B018


def _one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlmic: error: ") and "Traceback" not in result.output, lines
    return lines[0]


@pytest.mark.parametrize("hidden", [("distributed",), ("dask", "distributed")])
def test_cluster_without_dask_is_one_line_naming_the_extra(hidden, phantom_dir, tmp_path, monkeypatch):
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra looks like to Python
    run = CliRunner().invoke(
        cli,
        ["extract", "--data", str(phantom_dir), "--backbone", "resnet18", "--weights", "random", "--layers", "1",
         "--store", str(tmp_path / "s.zarr"), "--cluster", "local:1", "--quiet"],
        prog_name="tlmic",
    )  # fmt: skip
    line = _one_error_line(run)
    assert line.endswith("pip install 'tlmic[cluster]'") and ", ".join(hidden) in line, line
    assert not (tmp_path / "s.zarr").exists()  # refused before any work

    # a bad --cluster value is still reported as such first
    run = CliRunner().invoke(cli, ["extract", "--data", str(phantom_dir), "--cluster", "nowhere"], prog_name="tlmic")
    assert "--cluster 'nowhere' is not valid" in _one_error_line(run)


def test_distributed_fit_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    """lightgbm.dask needs dask.dataframe, hence pyarrow: checked before the store is even opened."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    args = ["probe", "--store", str(tmp_path / "none.zarr"), "--cluster", "local:1", "--models", "lightgbm"]
    line = _one_error_line(CliRunner().invoke(cli, [*args, "--distributed-fit"], prog_name="tlmic"))
    assert "--distributed-fit needs pyarrow" in line and line.endswith("pip install 'tlmic[cluster]'"), line
    line = _one_error_line(CliRunner().invoke(cli, args, prog_name="tlmic"), 1)  # without it, pyarrow is not needed:
    assert line.startswith("tlmic: error: no feature store at"), line  # the next check speaks


def _imports_at_load(tree: ast.AST):
    """The import statements a module runs when it is loaded (not those inside functions)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports_at_load(node)


def test_no_module_imports_dask_when_loaded():
    """Dask is the [cluster] extra: tlmic imports dask and distributed only inside the functions
    that use them, so every module loads without it."""
    found = []
    for path in [*REPO.glob("tlmic/**/*.py"), *REPO.glob("tlmic_feats/**/*.py"), *REPO.glob("cli/**/*.py")]:
        for node in _imports_at_load(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in ("dask", "distributed") for n in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found
    assert any(  # the check sees imports inside functions as such: it would catch a top-level one
        isinstance(n, ast.ImportFrom) and n.module == "distributed"
        for n in ast.walk(ast.parse((REPO / "tlmic_feats/runtime/cluster.py").read_text()))
    )


def test_doctor_says_how_to_keep_one_onnxruntime():
    from tlmic_feats.doctor import ONNXRUNTIME_GPU_FIX, onnxruntime_warnings

    both = onnxruntime_warnings({"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}, False, {})
    assert len(both) == 1 and ONNXRUNTIME_GPU_FIX in both[0]
    cpu_build_on_gpu = onnxruntime_warnings({"onnxruntime": "1.31.1"}, True, {"CPUExecutionProvider": "works"})
    assert len(cpu_build_on_gpu) == 1 and "tlmic[gpu]" in cpu_build_on_gpu[0]
    assert onnxruntime_warnings({"onnxruntime-gpu": "1.31.1"}, True, {"CUDAExecutionProvider": "works"}) == []
    assert onnxruntime_warnings({"onnxruntime": "1.31.1"}, False, {"CPUExecutionProvider": "works"}) == []
