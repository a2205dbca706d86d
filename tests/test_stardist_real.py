"""experiments/stardist_real.py scores StarDist-3D on the same slabs as experiments/real_volumes_train.py.

Only the parts that need neither TensorFlow nor the real data: the split arithmetic must stay the
one the blockseg models were tested with, and recorded command lines must come back runnable.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

# the repository root, wherever this file sits under tests/
EXPERIMENTS = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file()) / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mods():
    return _load("stardist_real"), _load("real_volumes_train")


def test_same_split_and_crops_as_blockseg_runs(mods):
    sd, bs = mods
    assert sd.SPLIT == bs.SPLIT
    assert sd.DATASETS == bs.DATASETS
    assert [sd.slabs(n) for n in range(1, 300)] == [bs.slabs(n) for n in range(1, 300)]


def test_patches_fit_validation_slabs(mods):
    sd, _ = mods
    nz = {"gonuclear": 100, "bbbc050": 51}
    for name, (pz, _, _) in sd.PATCH.items():
        a, b = sd.slabs(nz[name])
        assert pz <= b - a and pz <= a  # StarDist draws its validation patch from the validation slab


def test_requote_gives_back_the_arguments(mods):
    sd, _ = mods
    argv = ["experiments/stardist_real.py", "--train", "--lr", "0.002", "--label", "lr 2e-3 (blockseg's)"]
    unquoted = " ".join(argv)  # how the first runs were recorded
    assert shlex.split(sd.requote(unquoted)) == argv[1:]
    assert shlex.split(sd.requote(shlex.join(argv))) == argv[1:]
    assert sd.requote("x/stardist_real.py --train --work /tmp/a") == "--train --work /tmp/a"
