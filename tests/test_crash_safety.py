"""Crash safety: extraction killed with SIGKILL at random moments resumes to the identical store;
a second writer on the same store is refused with the holder named."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tlmic_feats import FeatureStore

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from tlmic_cli.main import main; main()"]


def _args(data, store):
    return [
        "extract",
        "--data",
        str(data),
        "--backbone",
        "resnet18",
        "--weights",
        "random:5",
        "--layers",
        "all",
        "--store",
        str(store),
        "--chunk-rows",
        "4",
        "--batch-size",
        "2",
        "--quiet",
    ]


def _env(tmp_path):
    return {**os.environ, "TLMIC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bigger_phantom(tmp_path_factory):
    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("ph"), PhantomConfig(n_train=160, n_val=20, n_test=20))


def test_sigkill_at_random_moments_then_resume_gives_the_identical_store(bigger_phantom, tmp_path):
    phantom_dir = bigger_phantom
    env = _env(tmp_path)
    reference = tmp_path / "ref.zarr"
    subprocess.run([*CLI, *_args(phantom_dir, reference)], env=env, check=True, capture_output=True)
    victim = tmp_path / "victim.zarr"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(30):
        proc = subprocess.Popen(
            [*CLI, *_args(phantom_dir, victim)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(float(rng.uniform(2.0, 5.0)))  # during start-up, pixel cache, creation or shard writes
        if proc.poll() is not None:  # it finished before the kill: start afresh until enough kills
            assert proc.returncode == 0
            shutil.rmtree(victim)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if kills >= 6:
            break
    assert kills >= 5
    done = subprocess.run([*CLI, *_args(phantom_dir, victim)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = FeatureStore.open(reference), FeatureStore.open(victim)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.splits, b.splits)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.addresses == b.addresses
    for address in a.addresses:
        np.testing.assert_array_equal(a.features(address), b.features(address))  # no row lost or duplicated
    assert not (tmp_path / "victim.zarr.lock").exists()


def test_second_writer_is_refused_naming_the_holder(bigger_phantom, tmp_path):
    phantom_dir = bigger_phantom
    env = _env(tmp_path)
    store = tmp_path / "s.zarr"
    first = subprocess.Popen(
        [*CLI, *_args(phantom_dir, store)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 60
        while not (tmp_path / "s.zarr.lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run([*CLI, *_args(phantom_dir, store)], env=env, capture_output=True, text=True)
        assert first.poll() is None  # the first writer was still at work when the second came
        assert second.returncode == 1, second.stderr
        assert f"being written by pid {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0
    FeatureStore.open(store)  # the first writer's store is complete and readable
