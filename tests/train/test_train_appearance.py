"""Appearance augmentation of training crops (gamma, blur, noise): what each does, and that runs
without it keep their random stream (so earlier trainings reproduce)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from blockseg.train.config import AugmentConfig
from blockseg.train.data import appearance


def crop(seed=0):
    return np.random.default_rng(seed).normal(0.3, 0.2, (8, 24, 24)).astype(np.float32)


def test_off_by_default_changes_nothing_and_draws_nothing():
    x, rng = crop(), np.random.default_rng(5)
    out = appearance(x, rng, AugmentConfig())
    assert out is x
    assert rng.random() == np.random.default_rng(5).random()  # the stream is untouched


def test_gamma_keeps_the_crop_range_and_bends_the_values():
    x = crop()
    cfg = AugmentConfig(gamma=1.0, appearance_p=1.0)
    out = appearance(x, np.random.default_rng(1), cfg)
    assert out.dtype == np.float32
    np.testing.assert_allclose([out.min(), out.max()], [x.min(), x.max()], rtol=1e-5)
    assert not np.allclose(out, x)
    # monotone: voxel order is kept
    assert (np.argsort(out, axis=None) == np.argsort(x, axis=None)).mean() > 0.99


def test_blur_smooths_and_noise_adds_variance():
    x = crop()
    blurred = appearance(x, np.random.default_rng(2), AugmentConfig(blur_sigma=2.0, appearance_p=1.0))
    assert blurred.std() < 0.8 * x.std()
    assert abs(blurred.mean() - x.mean()) < 0.01
    flat = np.zeros((8, 24, 24), np.float32)
    noisy = appearance(flat, np.random.default_rng(3), AugmentConfig(noise_sigma=0.2, appearance_p=1.0))
    assert 0 < noisy.std() <= 0.2 * 1.1


def test_probability_zero_leaves_the_crop():
    x = crop()
    cfg = AugmentConfig(gamma=1.0, blur_sigma=1.0, noise_sigma=0.1, appearance_p=0.0)
    np.testing.assert_array_equal(appearance(x, np.random.default_rng(4), cfg), x)


@pytest.mark.parametrize("bad", [{"gamma": -0.1}, {"blur_sigma": 5.0}, {"noise_sigma": 2.0}, {"appearance_p": 1.5}])
def test_out_of_range_values_are_refused(bad):
    with pytest.raises(ValidationError):
        AugmentConfig(**bad)
