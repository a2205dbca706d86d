"""One timed run of predict's engine, or of the zarr ceiling, on a fresh local cluster (JSON on stdout).

Run as a subprocess by ``bench_predict.py`` so that the engine of another commit (``PYTHONPATH``
pointing at its ``blockseg``) can be timed beside this one with the same workers:

    python benchmarks/engine_run.py predict IMAGE CKPT OUT --block 64 256 256 --workers 2 [--patch auto]
    python benchmarks/engine_run.py ceiling IMAGE - OUT --block 64 256 256 --workers 2 --channels 3
    python benchmarks/engine_run.py network IMAGE CKPT OUT --block 64 256 256 --workers 2

``ceiling`` is the least any engine must do: every block task reads its core of the image and
writes it, as uint8, to ``--channels`` volumes with the output's chunks and codec and, like the
engine, without zarr's empty-chunk check (``write_empty_chunks=True``): zarr read + zarr write
of the same volume and chunks, with the same workers.

``network`` is the ceiling plus the network's own work on each block's core, in memory: the
input normalised, one forward pass of the whole core (no halo, no overlap, no blending, no
exchange between blocks) and each channel quantised to uint8 before it is written. It is what
any engine running this network must at least do; an identity network costs little, but its
forward (a copy per channel and a sigmoid) and the quantisation are not free.

Each mode runs twice on the same cluster: ``wall_cold`` is the first run (it pays each worker's
one-off start: loading the model, the compiled kernels' cache, first touches of memory),
``wall`` the second, the per-voxel cost that a large volume sees.
"""

from __future__ import annotations

import argparse
import json
import math
import time


def ceiling_block(image_path: str, out_path: str, shape, block, chunks, channels: int, checkpoint: str | None,
                  block_id: int) -> int:  # fmt: skip
    """Read one block's core of the image and write it into every output channel; with a
    ``checkpoint``, run the network on the core in memory and write its quantised channels."""
    import zarr

    from blockseg.grid import BlockGrid
    from blockseg.io.volume import open_volume

    core = BlockGrid(shape, block, 0, chunks)[block_id].core
    data = open_volume(image_path).array[core]
    if checkpoint is None:
        outs = [data] * channels
    else:
        from blockseg.models.base import normalise
        from blockseg.models.checkpoint import read_checkpoint
        from blockseg.predict.engine import cached_model
        from blockseg.predict.infer import InferenceOptions, run_batch
        from blockseg.predict.kernels import quantise

        norm = read_checkpoint(checkpoint)["metadata"].get("normalisation")
        out = run_batch(cached_model(checkpoint, "cpu"), normalise(data, norm)[None, None], InferenceOptions(1, "cpu"))[0]
        outs = [quantise(out[c], "prob") for c in range(channels)]
    for c, values in enumerate(outs):  # as the engine writes its channels: without zarr's empty-chunk check
        zarr.open_array(f"{out_path}/c{c}", mode="r+").with_config({"write_empty_chunks": True})[core] = values
    return block_id


def _warm() -> None:
    """Import what predict's tasks import (torch, the engine and its compiled kernels)."""
    import importlib

    import torch  # noqa: F401

    for name in ("blockseg.predict.engine", "blockseg.predict.kernels"):
        try:
            importlib.import_module(name)
        except ImportError:  # the baseline revision has no kernels module
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["predict", "ceiling", "network"])
    ap.add_argument("image")
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--block", type=int, nargs=3, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--patch", default=None, help="auto | train | N (omitted: the engine's default)")
    ap.add_argument("--channels", type=int, default=3)
    args = ap.parse_args()

    import zarr

    from blockseg.runtime.cluster import ClusterConfig, dask_client
    from blockseg.io.volume import open_volume

    cfg = ClusterConfig(n_workers=args.workers, threads_per_worker=1, dashboard=False, memory_limit="6GiB")
    vol = open_volume(args.image)
    shape, chunks = vol.shape, tuple(vol.array.chunks)
    with dask_client(cfg, quiet=True) as client:
        if args.mode in ("ceiling", "network"):
            from functools import partial

            from blockseg.grid import BlockGrid

            grid = BlockGrid(shape, tuple(args.block), 0, chunks)
            group = zarr.open_group(args.out, mode="w")
            for c in range(args.channels):
                group.create_array(f"c{c}", shape=shape, dtype="uint8", chunks=chunks, fill_value=0)
            client.run(_warm)  # same imports as predict's workers: start-up is not timed
            walls = []
            for _ in range(2):
                t = time.perf_counter()
                ckpt = args.checkpoint if args.mode == "network" else None
                futs = client.map(partial(ceiling_block, args.image, args.out, shape, tuple(args.block), chunks, args.channels,
                                          ckpt), list(grid.block_ids), pure=False)  # fmt: skip
                client.gather(futs)
                walls.append(time.perf_counter() - t)
            res = {"wall": walls[1], "wall_cold": walls[0], "patch": None}
        else:
            from blockseg.predict import predict

            kw = dict(block_shape=tuple(args.block), client=client, overwrite=True, device="cpu", progress=False,
                      pyramid_levels=1, torch_threads=1)  # fmt: skip
            if args.patch:
                kw["patch"] = args.patch if args.patch in ("auto", "train") else int(args.patch)
            client.run(_warm)  # imports (torch, numba kernels) are per-worker start-up, not per voxel
            walls = []
            for _ in range(2):
                t = time.perf_counter()
                rep = predict(args.image, args.checkpoint, args.out, **kw)
                walls.append(time.perf_counter() - t)
            res = {"wall": walls[1], "wall_cold": walls[0], "patch": list(rep.plan.lattice.patch), "patches": rep.patches,
                   "compute_factor": rep.plan.compute_factor, "scratch_bytes": rep.plan.scratch_bytes}  # fmt: skip
    res["voxels"] = math.prod(shape)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
