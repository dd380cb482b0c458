"""Limits on threads and memory while many fits share one process: one BLAS/OpenMP/LightGBM thread
per probe cell when cells run in threads, LightGBM's process-wide thread cap, glibc's malloc arenas,
and the cores this process may use."""

from __future__ import annotations

import contextlib
import threading

_LGBM_CAP_LOCK = threading.Lock()


_lgbm_caps: list[int] = []  # the cap each active holder asked for


_lgbm_cap_before = [-1]  # LightGBM's cap before the first of them came (-1: none)


@contextlib.contextmanager
def lightgbm_max_threads(n: int):
    """Cap every LightGBM call in this process at ``n`` threads (``LGBM_SetMaxThreads``), restoring
    the previous cap when the last holder leaves.

    Needed to fit LightGBM probes in several threads of one process: LightGBM keeps its thread
    count in one process-wide variable that each call sets (a call without ``num_threads``, such
    as a prediction, resets it to OpenMP's default), so concurrent calls can size per-thread
    buffers for one count and run a parallel region with another. That crashed a test run (SIGFPE
    in an OpenMP worker of lib_lightgbm); LightGBM's docs warn against changing ``num_threads``
    while another job trains. Under a cap of 1 every call runs single-threaded whatever it sets.

    Holders may overlap (one per task thread on a Dask worker with several threads): while any is
    inside, the cap is the smallest any of them asked for, and it is lifted only when all have left.
    """
    import ctypes

    from lightgbm.basic import _LIB, _safe_call  # LightGBM's own C handle: no public API sets its cap

    if n < 1:
        raise ValueError(f"lightgbm_max_threads needs n >= 1; got {n}")

    with _LGBM_CAP_LOCK:
        if not _lgbm_caps:
            before = ctypes.c_int(-1)
            _safe_call(_LIB.LGBM_GetMaxThreads(ctypes.byref(before)))
            _lgbm_cap_before[0] = before.value
        _lgbm_caps.append(n)
        _safe_call(_LIB.LGBM_SetMaxThreads(ctypes.c_int(min(_lgbm_caps))))
    try:
        yield
    finally:
        with _LGBM_CAP_LOCK:
            _lgbm_caps.remove(n)
            cap = min(_lgbm_caps) if _lgbm_caps else _lgbm_cap_before[0]
            _safe_call(_LIB.LGBM_SetMaxThreads(ctypes.c_int(cap)))


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_CELL_LIMITS_LOCK = threading.Lock()


_cell_limits: list = [0, None]  # holders inside, and the ExitStack that lifts the limits


@contextlib.contextmanager
def one_thread_per_cell():
    """One thread for BLAS (threadpoolctl, process-wide; OpenMP's count is per calling thread) and
    for LightGBM (its own process-wide cap): how cells fit when several run at once, here or on a
    cluster worker.

    Holders may overlap (one per task thread on a Dask worker with several threads): the first in
    sets the limits and the last out restores them, so none is lifted while another cell still fits.
    """
    from threadpoolctl import threadpool_limits

    with _CELL_LIMITS_LOCK:
        if _cell_limits[0] == 0:
            with contextlib.ExitStack() as stack:
                stack.enter_context(threadpool_limits(1))
                stack.enter_context(lightgbm_max_threads(1))
                _cell_limits[1] = stack.pop_all()
        _cell_limits[0] += 1
    try:
        yield
    finally:
        with _CELL_LIMITS_LOCK:
            _cell_limits[0] -= 1
            if _cell_limits[0] == 0:
                stack, _cell_limits[1] = _cell_limits[1], None
                _take_openblas_control()
                stack.close()


def _take_openblas_control() -> None:
    """Let this thread restore OpenBLAS's thread count. threadpoolctl (3.6 and newer) lets only the
    first thread that set a pthreads OpenBLAS's count change it while that thread lives, and others
    silently do nothing; the last cell out restores the count the first cell in lowered, from
    another thread when they overlap (a Dask worker's pool threads live on), so without this BLAS
    stayed at one thread for the rest of the process. Safe: no other cell is inside (the caller
    holds the lock and was the last)."""
    import threadpoolctl

    controller = getattr(threadpoolctl, "OpenBLASController", None)
    if controller is not None and hasattr(controller, "clear_controlling_thread"):
        controller.clear_controlling_thread(force=True)


def limit_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does). Fits in worker threads otherwise each
    get their own arena, which glibc keeps after the arrays are freed: peak memory then grows with
    the number of layers probed instead of staying at one layer's working set."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, n)  # M_ARENA_MAX


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS between layers (glibc only)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def cpu_count() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
