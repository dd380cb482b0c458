"""Dask clusters for extraction and probe grids: connecting, checking, and the worker-side pieces.

``--cluster`` takes one of:

* ``local:N`` -- a :class:`distributed.LocalCluster` of N worker processes on this machine (one
  thread each; each worker's torch gets its share of the cores). With ``--device cuda`` (or
  ``auto`` on a GPU machine) each worker is pinned to one GPU through ``CUDA_VISIBLE_DEVICES``:
  N at most the number of GPUs; ``local:gpus`` is one worker per GPU.
* ``tcp://HOST:PORT`` (or ``tls://``) -- an existing Dask scheduler. Its workers must see the
  store's location: a shared filesystem path, or an fsspec URL (``s3://``, ``gs://``). Start GPU
  workers one per GPU, each pinned (``CUDA_VISIBLE_DEVICES=i dask worker tcp://... --nthreads 1``).

What runs where: the client (the ``tlmic`` process) creates the store and every array from the
manifest, holds the store's lock, and alone touches metadata and finalizes. Workers load the
backbone once per process (:func:`worker_engine`), decode their shard's images, write that
shard's rows of every array and then its done flag. A failed or killed worker's shard is retried
by Dask; a killed client leaves flags behind and a rerun computes only the shards not flagged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import ClusterError, MissingDependencyError, UsageError

CLUSTER_FORMS = ("local:N", "local:gpus", "tcp://HOST:PORT", "tls://HOST:PORT")
CLUSTER_EXTRA = "pip install 'tlmic[cluster]'"
# What the extra installs and each feature imports: Dask's scheduler and client; lightgbm.dask also
# imports dask.dataframe, which needs pyarrow.
CLUSTER_MODULES = ("dask", "distributed")
DISTRIBUTED_FIT_MODULES = (*CLUSTER_MODULES, "pyarrow")


def require_cluster_packages(option: str = "--cluster", modules: tuple[str, ...] = CLUSTER_MODULES) -> None:
    """Raise a one-line :class:`MissingDependencyError` naming the ``[cluster]`` extra unless every
    one of ``modules`` is installed (checked without importing them: Dask is an optional dependency)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"{option} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed; "
            f"{CLUSTER_EXTRA}"
        )


@dataclass(frozen=True)
class ClusterSpec:
    kind: str  # "local" or "remote"
    n_workers: int = 0  # local only; 0 with gpus=True: one per GPU
    gpus: bool = False
    address: str = ""


def parse_cluster(spec: str, *, device: str = "auto") -> ClusterSpec:
    """Parse ``--cluster``; ``device`` decides whether local workers are pinned to GPUs. A valid
    spec without Dask installed fails here, before any work (:func:`require_cluster_packages`)."""
    parsed = _parse_cluster(spec, device)
    require_cluster_packages()
    return parsed


def _parse_cluster(spec: str, device: str) -> ClusterSpec:
    text = spec.strip()
    m = re.fullmatch(r"local:(\d+|gpus)", text)
    if m:
        if m.group(1) == "gpus":
            if device == "cpu":
                raise UsageError(f"--cluster {spec!r} pins workers to GPUs; with --device cpu use local:N")
            return ClusterSpec("local", gpus=True)
        n = int(m.group(1))
        if n < 1:
            raise UsageError(f"--cluster {spec!r}: need at least one worker")
        return ClusterSpec("local", n_workers=n, gpus=_wants_gpus(device))
    if re.fullmatch(r"(tcp|tls|ucx|inproc)://\S+", text):
        return ClusterSpec("remote", address=text)
    raise UsageError(f"--cluster {spec!r} is not valid; valid: {', '.join(CLUSTER_FORMS)}")


def _wants_gpus(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available() and device in ("auto", "cuda")


@contextlib.contextmanager
def connect(spec: str, *, device: str = "auto", log: Callable[[str], None] | None = None) -> Iterator:
    """A :class:`distributed.Client` for ``spec``; a local cluster is started and shut down here."""
    import logging

    parsed = parse_cluster(spec, device=device)  # first: a missing Dask is one line, not an ImportError
    from distributed import Client, LocalCluster

    log = log or (lambda m: print(m, file=sys.stderr))
    if parsed.kind == "remote":
        try:
            client = Client(parsed.address, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {parsed.address}: {e}") from None
        try:
            if not client.scheduler_info()["workers"]:
                try:
                    client.wait_for_workers(1, timeout=60)
                except TimeoutError:
                    raise ClusterError(f"no Dask worker joined the scheduler at {parsed.address} within 60 s") from None
            log(f"connected to {parsed.address} ({len(client.scheduler_info()['workers'])} workers)")
            yield client
        finally:
            client.close()
        return
    kw = dict(threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    if parsed.gpus:
        import torch

        n_gpus = torch.cuda.device_count()
        if n_gpus == 0:
            raise UsageError(f"--cluster {spec}: this machine has no GPU; use local:N for CPU workers")
        n = parsed.n_workers or n_gpus
        if n > n_gpus:
            raise UsageError(f"--cluster local:{n} pins one worker per GPU; this machine has {n_gpus} GPU(s)")
        cluster = _gpu_cluster(n, **kw)
    else:
        cluster = LocalCluster(n_workers=parsed.n_workers, **kw)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _gpu_cluster(n: int, **kw):
    """Local workers, one per GPU, each seeing only its own (``CUDA_VISIBLE_DEVICES``)."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{i}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(i)}}}
        for i in range(n)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=kw.get("silence_logs"))


def torch_threads_per_worker(client) -> dict[str, int]:
    """``{worker address: torch threads}``: a host's cores shared among its workers."""
    cores = client.run(lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    hosts: dict[str, list[str]] = {}
    for addr, info in client.scheduler_info()["workers"].items():
        hosts.setdefault(info.get("host", addr), []).append(addr)
    return {a: max(1, int(cores.get(a, 1)) // len(group)) for group in hosts.values() for a in group}


def check_visible(client, location, *, member: str = "zarr.json", what: str = "store") -> None:
    """Fail with one clear message when some worker cannot see ``location/member`` (a local path
    the workers do not share, or an in-memory URL)."""
    target = str(location)

    def probe(path=target, member=member) -> str:
        from .locations import location_exists, store_location

        try:
            return "" if location_exists(store_location(path), member) else "not found"
        except Exception as e:  # any failure to look is a failure to see
            return f"{type(e).__name__}: {e}"

    seen = client.run(probe)
    blind = {w: why for w, why in seen.items() if why}
    if blind:
        worker, why = next(iter(blind.items()))
        raise ClusterError(
            f"{len(blind)} of {len(seen)} Dask worker(s) cannot see the {what} at {target} (e.g. {worker}: {why}); "
            "put it on a filesystem every worker mounts at the same path, or use an fsspec URL "
            "(s3://, gs://) the workers can reach"
        )


def my_threads(threads: dict[str, int]) -> int:
    """This worker's entry of :func:`torch_threads_per_worker`."""
    from distributed import get_worker

    try:
        return threads.get(get_worker().address, 0)
    except ValueError:  # not on a worker
        return 0


def gather(client, futures: list, on_result: Callable[[object], None]) -> None:
    """Wait for ``futures``, calling ``on_result`` as each finishes; on the first failure cancel
    the rest and raise it (a lost worker becomes one :class:`ClusterError` line)."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    try:
        for future in as_completed(futures):
            on_result(future.result())
    except KilledWorker as e:
        client.cancel(futures)
        raise ClusterError(
            f"Dask workers died running {e.args[0] if e.args else 'a task'} (too many times to retry); "
            "a worker may be out of memory: use fewer --batch-size or more memory per worker"
        ) from None
    except BaseException:
        client.cancel(futures)
        raise


def worker_cached(name: str, make: Callable[[], object], keep: int = 1):
    """A per-worker-process cache (e.g. a probe task's layer features): built once, reused by the
    next tasks of the same key on that worker; at most ``keep`` entries kept."""
    cache = _CACHE
    if name not in cache:
        while len(cache) >= keep:
            cache.pop(next(iter(cache)))
        cache[name] = make()
    return cache[name]


_CACHE: dict[str, object] = {}
