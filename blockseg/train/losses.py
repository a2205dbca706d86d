"""Training losses per representation (raw network outputs against target dicts).

Every loss takes the network's **raw** outputs ``(N, C, z', y', x')`` (before
:meth:`~blockseg.models.base.BlocksegNet.postprocess`) and float targets ``(N, c, z, y, x)``;
targets larger than the output (valid padding) are centre-cropped to it. B and C: class-balanced
BCE + 0.5 soft Dice; D and sdt: MSE of ``tanh(raw)``; cpv: weighted MSE, by default relative to
the nuclei's size; 3label: class-balanced cross-entropy; aff: class-balanced BCE; gauss: weighted
MSE; density: L1 (with the joint network's soft Dice + weighted cross-entropy on its
segmentation).

An optional ``loss_mask`` target (``(N, z, y, x)``, 1 = counts, 0 = ignored; from a training
volume's ignore array) leaves the ignored voxels out of every term: out of the sums and out of
the batch statistics (class-balance weights, Dice sums, cpv scale). Without it, or when it is 1
everywhere, the losses are exactly the unmasked ones.

The table of losses and weights: ``docs/api/train.md``, section *Losses*.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import BlocksegError
from ..models.base import REPRESENTATIONS, check_representations

#: default coefficient per representation
DEFAULT_WEIGHTS = {"B": 1.0, "C": 1.0, "D": 5.0, "cpv": 1.0, "3label": 1.0, "sdt": 1.0, "aff": 1.0, "gauss": 1.0, "density": 1.0}


def center_crop(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the last three axes of ``t`` symmetrically to ``shape``."""
    src = t.shape[-3:]
    if any(s < o or (s - o) % 2 for s, o in zip(src, shape)):
        raise BlocksegError(f"cannot centre-crop targets {tuple(src)} to output {tuple(shape)}")
    sl = tuple(slice((s - o) // 2, (s - o) // 2 + o) for s, o in zip(src, shape))
    return t[(Ellipsis, *sl)]


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with the minority class up-weighted by ``max(w, 1-w) / min(w, 1-w)``.

    ``w`` is the foreground fraction of the batch clipped to [0.05, 0.95] (PyTC's weight '1'),
    over the voxels where ``mask`` (0/1, broadcast to ``target``) is 1 when given.
    """
    with torch.no_grad():
        w = target.float().mean() if mask is None else masked_mean(target.float(), mask)
        w = w.clamp(0.05, 0.95)
        ratio = torch.maximum(w, 1 - w) / torch.minimum(w, 1 - w)
        weight = torch.where(target > 0.5, ratio if w < 0.5 else torch.ones_like(ratio), torch.ones_like(ratio) if w < 0.5 else ratio)
        if mask is not None:
            weight = weight * mask
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(1e-6)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the voxels where ``mask`` (0/1, broadcast to ``values``) is 1."""
    mask = mask.expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1e-12)


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - (2 |P.T| + eps) / (|P| + |T| + eps)`` over the whole batch, per channel, averaged
    (over the voxels where ``mask`` is 1 when given)."""
    if mask is not None:
        prob, target = prob * mask, target * mask
    dims = (0, *range(2, prob.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w (p - t)^2) / sum(w)`` (weights broadcast over channels)."""
    weight = weight.expand_as(pred)
    return (weight * (pred - target) ** 2).sum() / weight.sum().clamp_min(1e-12)


def balanced_ce(logits: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy with voxel weights = inverse class frequency (fractions >= 0.05),
    over the voxels where ``mask`` (``(N, 1, z, y, x)``, 0/1) is 1 when given."""
    with torch.no_grad():
        dims = (0, *range(2, onehot.ndim))
        kept = onehot if mask is None else onehot * mask
        frac = onehot.float().mean(dims) if mask is None else kept.float().sum(dims) / mask.sum().clamp_min(1.0)
        frac = frac.clamp(0.05, 1.0)
        present = kept.float().sum(dims) > 0
        cw = torch.where(present, 1.0 / frac, torch.zeros_like(frac))
        weight = (kept * cw.view(1, -1, 1, 1, 1)).sum(1)
    ce = -(onehot * F.log_softmax(logits, dim=1)).sum(1)
    return (weight * ce).sum() / weight.sum().clamp_min(1e-6)


class MultiLoss:
    """Sum of per-representation losses for one network.

    Parameters
    ----------
    representations : sequence of str
        The network's representations (in channel order).
    weights : mapping, optional
        Coefficient per representation (default :data:`DEFAULT_WEIGHTS`; sdt x100 with cpv).
    cpv_units : {"relative", "voxels"}
        cpv loss relative to the batch's squared centre distances (default), or in voxels.
    """

    def __init__(self, representations: Sequence[str], weights: Mapping[str, float] | None = None, cpv_units: str = "relative"):
        self.representations = check_representations(representations)
        if cpv_units not in ("relative", "voxels"):
            raise BlocksegError(f"cpv_units must be 'relative' or 'voxels', got {cpv_units!r}")
        self.cpv_units = cpv_units
        w = dict(DEFAULT_WEIGHTS)
        if "sdt" in self.representations and "cpv" in self.representations:
            w["sdt"] = 100.0
        unknown = set(weights or {}) - set(REPRESENTATIONS)
        if unknown:
            raise BlocksegError(f"loss weights for unknown representations {sorted(unknown)}")
        w.update(weights or {})
        self.weights = {r: float(w[r]) for r in self.representations}
        self.joint = "density" in self.representations

    @staticmethod
    def targets_tensor(targets: Mapping[str, torch.Tensor], rep: str) -> torch.Tensor:
        """Stack the ``(N, z, y, x)`` target channels of ``rep`` into ``(N, c, z, y, x)``."""
        names = REPRESENTATIONS[rep][0]
        missing = [c for c in names if c not in targets]
        if missing:
            raise BlocksegError(f"targets lack channel(s) {missing} of representation {rep}")
        return torch.stack([targets[c] for c in names], dim=1)

    def __call__(self, raw: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(total loss, {representation: its (unweighted) loss value})``.

        ``targets`` maps channel names to tensors ``(N, z, y, x)``. The cpv weights (1 inside
        nuclei, 0.01 outside) come from the optional key ``"labels_fg"`` (``(N, z, y, x)``, 0/1,
        the instance mask); without it, from the non-zero cpv vectors. The optional key
        ``"loss_mask"`` (``(N, z, y, x)``, 1 = counts, 0 = ignored) leaves voxels out of every
        term; a mask that is 1 everywhere is no mask (the same losses, bit for bit).
        """
        raw = raw.float()
        out_shape = raw.shape[-3:]
        total = raw.new_zeros(())
        parts: dict[str, float] = {}
        i = 0
        fg = targets.get("labels_fg")
        if fg is not None:
            fg = center_crop(fg.float(), out_shape)[:, None]
        keep = targets.get("loss_mask")
        if keep is not None:
            keep = center_crop(keep.float(), out_shape)[:, None]
            keep = None if bool(keep.all()) else keep
        for r in self.representations:
            n = len(REPRESENTATIONS[r][0])
            x = raw[:, i : i + n]
            i += n
            t = center_crop(self.targets_tensor(targets, r).float(), out_shape)
            loss = self._loss(r, x, t, fg, keep)
            parts[r] = float(loss.detach())
            total = total + self.weights[r] * loss
        if i != raw.shape[1]:
            raise BlocksegError(f"network output has {raw.shape[1]} channels, representations need {i}")
        return total, parts

    def _loss(self, r: str, x: torch.Tensor, t: torch.Tensor, fg: torch.Tensor | None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of representation ``r``; over the voxels where ``keep`` (``(N, 1, z, y, x)``,
        0/1) is 1 when given (None: every voxel, the unmasked formulas as they are)."""
        if r in ("B", "C"):
            dice = soft_dice(torch.sigmoid(x), t, mask=keep)
            if self.joint and r == "B":
                return dice + balanced_bce(x, t, keep)
            return balanced_bce(x, t, keep) + 0.5 * dice
        if r in ("D", "sdt"):
            return F.mse_loss(torch.tanh(x), t) if keep is None else masked_mean((torch.tanh(x) - t) ** 2, keep)
        if r == "cpv":
            inside = fg if fg is not None else (t.abs().sum(1, keepdim=True) > 0).float()
            w = _masked(inside.clamp(0.01, 1.0), keep)
            loss = weighted_mse(x, t, w)
            if self.cpv_units == "relative":
                with torch.no_grad():
                    scale = weighted_mse(torch.zeros_like(t), t, w).clamp_min(1.0)
                loss = loss / scale
            return loss
        if r == "3label":
            ce = balanced_ce(x, t, keep)
            return ce + soft_dice(torch.softmax(x, 1), t, mask=keep) if self.joint else ce
        if r == "aff":
            return balanced_bce(x, t, keep)
        if r == "gauss":
            return weighted_mse(torch.sigmoid(x), t, _masked(torch.where(t >= 0.01, 1.0, 1e-5), keep))
        if r == "density":
            return F.l1_loss(x, t) if keep is None else masked_mean((x - t).abs(), keep)
        raise BlocksegError(f"no loss for representation {r}")  # pragma: no cover


def _masked(weight: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``weight`` times the loss mask ``keep`` (``weight`` itself without one)."""
    return weight if keep is None else weight * keep
