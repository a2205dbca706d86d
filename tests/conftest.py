from __future__ import annotations

from pathlib import Path

import pytest

#: ../shared/data/real beside the checkout (absent in a plain clone: tests using it skip)
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


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
