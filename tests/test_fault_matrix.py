"""The exactly-once matrix (issue 29, goal 1): every write point of every stage x {raise, kill}.

For each named write point (:mod:`blockseg.faults`) of predict (pass 1's channels, the
scratch, the pass-1 and done markers, pass 2's channels, the pyramid), segment (seeds, round 1,
later rounds, relabel, pyramid), label (components, relabel) and evaluate, one task fails once
there -- it raises an ``OSError`` or SIGKILLs its worker -- on a 2-worker cluster. The run must
finish normally with every output byte equal to the undisturbed run's (every channel and
pyramid level; segment's also equals :func:`segment_array`) and, where a block task failed,
report that it ran again.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from blockseg.io.volume import create_volume, open_volume
from blockseg.models import demo_checkpoint_path
from blockseg.io.predictions import open_predictions, read_channels
from blockseg.segment import BCDDecoder, segment, segment_array

from _helpers import tube_predictions

pytestmark = pytest.mark.slow

ACTIONS = ["raise", "kill"]
DECODER = BCDDecoder(min_seed_size=1, min_size=1)


@pytest.fixture(scope="module")
def local_client():
    """This module's own 2-worker cluster: its workers are killed on purpose, so no other test
    shares it."""
    from blockseg.runtime.cluster import ClusterConfig, dask_client

    with dask_client(ClusterConfig(n_workers=2, memory_limit="2GiB", dashboard=False), quiet=True) as client:
        yield client


@pytest.fixture
def fault(local_client, tmp_path, monkeypatch):
    """Arm one fault in this process and on every worker (a worker restarted after a kill
    inherits this process's environment; the fault has fired by then). Both workers must be
    up first (a nanny restarts a killed one within seconds): a case never waits on a cluster
    that lost its workers."""
    _two_workers(local_client)
    folder = tmp_path / "fault"
    folder.mkdir()
    names = ("BLOCKSEG_FAULT", "BLOCKSEG_FAULT_DIR")

    def arm(pattern: str, action: str):
        values = dict(zip(names, (f"{pattern}={action}", str(folder))))
        for k, v in values.items():
            monkeypatch.setenv(k, v)
        local_client.run(_set_env, values)
        return folder / "fired"

    yield arm
    local_client.run(_set_env, dict.fromkeys(names))


def _two_workers(client) -> None:
    """Wait for both workers, and start new ones where a killed worker did not come back (seen
    in 2 of 4 runs of the whole matrix here, after about 20 kills: no worker process left and
    the next case waited forever; the cause in dask's nanny was not found)."""
    try:
        client.wait_for_workers(2, timeout=30)
    except TimeoutError:
        client.cluster.scale(2)
        client.wait_for_workers(2, timeout=120)


def _set_env(values: dict) -> None:
    """On a worker: set (or, for None, remove) environment variables."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _arrays(path) -> dict[str, bytes]:
    """Every array under a zarr group, as bytes, by its path (data only, not metadata)."""
    group = zarr.open_group(str(path), mode="r")
    out = {}
    for name, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array) and not name.startswith("_"):
            a = node[...]
            out[name] = a.dtype.str.encode() + a.tobytes()
    return out


# ---------------------------------------------------------------------------- predict
PREDICT_POINTS = [
    "predict.pass1.channels:before", "predict.scratch:before", "predict.scratch:after", "predict.pass1.marker:after",
    "predict.pass2.channels:before", "predict.pass2.marker:before", "predict.pass2.marker:after",
    "pyramid.level:before",
]  # fmt: skip
PREDICT_KW = dict(block_shape=(16, 32, 32), progress=False, batch_size=2, channels="all", pyramid_levels=2)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(3)
    # two blocks: pass 1 of each, the strips on their shared face in pass 2, a two-level pyramid
    img = create_volume(tmp / "img.zarr", (16, 32, 64), np.uint8, (0.48, 0.51, 0.51), (16, 32, 32))
    img.array[:] = rng.integers(60, 200, size=img.shape, dtype=np.uint8)
    return tmp / "img.zarr"


@pytest.fixture(scope="module")
def calm_prediction(image, local_client, tmp_path_factory):
    from blockseg.predict import predict

    out = tmp_path_factory.mktemp("calm") / "pred.zarr"
    report = predict(image, demo_checkpoint_path(), out, client=local_client, **PREDICT_KW)
    assert report.plan.to_dict() and _arrays(out)
    return out


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("point", PREDICT_POINTS)
def test_predict_write_points(point, action, image, calm_prediction, fault, local_client, tmp_path):
    from blockseg.predict import predict

    fired = fault(f"{point} *", action)
    out = tmp_path / "pred.zarr"
    report = predict(image, demo_checkpoint_path(), out, client=local_client, **PREDICT_KW)
    assert fired.exists(), f"{point} was never reached"
    calm, hit = _arrays(calm_prediction), _arrays(out)
    assert sorted(hit) == sorted(calm) and any("/1" in k for k in hit)  # every channel, two levels
    assert [k for k in calm if calm[k] != hit[k]] == []
    if not point.startswith("pyramid"):
        assert report.retried, "the report does not say that a task ran again"


# ---------------------------------------------------------------------------- segment
SEGMENT_POINTS = [
    "segment.seeds:before *", "segment.seeds:between *", "segment.seeds:after *",
    "segment.state:before round=1 *", "segment.pieces:after round=1 *",
    "segment.state:after round=[2-9] *", "segment.pieces:before round=[2-9] *",
    "segment.statistics:before *", "segment.statistics:after *",
    "segment.relabel:before *", "segment.relabel:after *", "segment.levels:after *", "pyramid.level:before *",
]  # fmt: skip


@pytest.fixture(scope="module")
def calm_segment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tube")
    pred, block = tube_predictions(tmp, length=256, blocks=4)
    ref = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), DECODER)
    out = tmp / "calm.zarr"
    segment(pred, out, DECODER, block_shape=block, halo=4, pyramid_levels=2)
    return pred, block, ref, out


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("point", SEGMENT_POINTS)
def test_segment_write_points(point, action, calm_segment, fault, local_client, tmp_path):
    pred, block, ref, calm = calm_segment
    fired = fault(point, action)
    out = tmp_path / "seg.zarr"
    report = segment(pred, out, DECODER, block_shape=block, halo=4, pyramid_levels=2, client=local_client)
    assert fired.exists(), f"{point} was never reached"
    assert np.array_equal(open_volume(out).array[:], ref)
    a, b = _arrays(calm), _arrays(out)
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []
    assert (calm / "instances.csv").read_text() == (out / "instances.csv").read_text()
    if not point.startswith("pyramid"):
        assert report.retried, "the report does not say that a task ran again"


# ---------------------------------------------------------------------------- label, evaluate
LABEL_POINTS = ["label.components:before", "label.components:after", "label.relabel:before", "label.relabel:after"]


@pytest.fixture(scope="module")
def mask(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mask")
    rng = np.random.default_rng(5)
    vol = create_volume(tmp / "mask.zarr", (32, 64, 64), np.uint8, (1.0, 1.0, 1.0), (16, 16, 16))
    vol.array[:] = (rng.random((32, 64, 64)) > 0.7).astype(np.uint8)
    from blockseg.segment import label

    label(tmp / "mask.zarr", tmp / "calm.zarr", block_shape=(16, 32, 32))
    return tmp / "mask.zarr", tmp / "calm.zarr"


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("point", LABEL_POINTS)
def test_label_write_points(point, action, mask, fault, local_client, tmp_path):
    from blockseg.segment import label

    src, calm = mask
    fired = fault(f"{point} *", action)
    report = label(src, tmp_path / "cc.zarr", block_shape=(16, 32, 32), client=local_client)
    assert fired.exists()
    a, b = _arrays(calm), _arrays(tmp_path / "cc.zarr")
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []
    assert report.retried


@pytest.mark.parametrize("action", ACTIONS)
def test_evaluate_block_point(action, mask, fault, local_client):
    from blockseg.evaluate import evaluate

    _, calm = mask
    kw = dict(client=local_client, block_voxels=16 * 32 * 32)
    undisturbed = evaluate(str(calm), str(calm), **kw).summary()
    fired = fault("evaluate.block:before *", action)
    hit = evaluate(str(calm), str(calm), **kw).summary()
    assert fired.exists()
    for s in (undisturbed, hit):
        s.pop("timings_s")
    assert hit == undisturbed and hit["n_true"] > 10
