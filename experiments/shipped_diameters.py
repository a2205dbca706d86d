"""Record the training nuclei's median diameter in the shipped checkpoints (``predict --diameter``).

The shipped ``demo`` and ``fluo`` networks were trained before checkpoints recorded
``metadata.nucleus_diameter_um``, so ``predict --diameter`` refused them. Their training volumes
are synthetic and deterministic (the commands in ``configs/train_demo.yaml`` and
``configs/train_fluo_synth.yaml``): this script regenerates them, measures the median equivalent-sphere
diameter of their nuclei exactly as ``blockseg train`` does (:func:`training_nucleus_diameter`),
and writes it into each checkpoint's metadata. Weights and every other field stay as they are.

    PYTHONPATH=. python experiments/shipped_diameters.py [--check]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fluo_real import SYNTH as FLUO_SYNTH  # noqa: E402  (fluo's synthetic training volumes)

ROOT = Path(__file__).resolve().parents[1]
#: checkpoint -> the `blockseg synth` arguments of its training volumes (from its config's header)
TRAINING = {
    "demo_bcd_cpv.pt": [["--shape", "96", "256", "256", "--seed", "1"]],
    "fluo_bcd.pt": [["--preset", "fluo", *args] for args in FLUO_SYNTH.values()],
}


def measure(synth_args: list[list[str]], tmp: Path) -> float:
    from blockseg.train.trainer import training_nucleus_diameter

    paths = []
    for i, args in enumerate(synth_args):
        path = tmp / f"train_{i}.zarr"
        subprocess.run([sys.executable, "-m", "blockseg_cli.main", "synth", str(path), *args], check=True, cwd=ROOT,
                       capture_output=True)  # fmt: skip
        paths.append(str(path))
    return training_nucleus_diameter(paths, "labels/nuclei")


def main(argv=None) -> int:
    from blockseg.models.checkpoint import read_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare the recorded values with fresh measurements")
    args = ap.parse_args(argv)
    bad = 0
    for name, synth_args in TRAINING.items():
        path = ROOT / "blockseg" / "checkpoints" / name
        with tempfile.TemporaryDirectory() as tmp:
            d = measure(synth_args, Path(tmp))
        payload = read_checkpoint(path)
        recorded = payload["metadata"].get("nucleus_diameter_um")
        print(f"{name}: training nuclei median diameter {d:.4f} µm (recorded: {recorded})")
        if args.check:
            bad += recorded is None or abs(recorded - d) > 1e-9
        elif recorded != d:
            payload["metadata"]["nucleus_diameter_um"] = d
            torch.save(payload, str(path))
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
