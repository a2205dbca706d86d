"""Fixtures shared by the whole suite (plain helper functions are in ``_helpers.py``).

Tests marked ``slow`` (more than ~3 s each on a quiet 2-core machine: a LocalCluster, a
subprocess, a whole run, many random geometries; the decorator says which) run in ``make test``
and CI; ``make test-fast`` leaves them out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _helpers import REAL_DATA, in_process


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    return REAL_DATA


@pytest.fixture(scope="session")
def local_client():
    """A small in-process-free LocalCluster shared by the tests (2 worker processes)."""
    from blockseg.runtime.cluster import ClusterConfig, dask_client

    # 4 GiB: the workers serve the whole suite (cached networks, arrays); at 2 GiB they ended it
    # paused above 80 % of their limit, and the memory watch rightly ended the stages
    with dask_client(ClusterConfig(n_workers=2, memory_limit="4GiB", dashboard=False), quiet=True) as client:
        yield client


@pytest.fixture
def no_cluster():
    """The test's commands run their blocks in this process: no dask cluster is started."""
    with in_process():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny networks (intra-op threads only add contention on a
    shared 2-core machine); the count is restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
