"""Networks shipped with blockseg, by the name configs and the CLI accept for a checkpoint path.

``demo``: residual U-Net (B, C, D, cpv) trained on synthetic NucMM-Z-like EM volumes
(``configs/train_demo.yaml``). ``fluo``: residual U-Net (3-label + cpv) for light-microscopy
nuclei, trained on a real confocal crop (``configs/train_fluo.yaml``). ``fluo_synth``: the earlier
``fluo``, residual U-Net (B, C, D) trained on synthetic fluorescence only
(``configs/train_fluo_synth.yaml``), a starting point for fine-tuning. ``em``: residual U-Net
(B, C, D) for serial-section EM nuclei at ~0.5 µm (bright nuclei), trained on two real larval
zebrafish EM crops + synthetic EM (``configs/train_em.yaml``). docs/results.md, "The shipped
checkpoints"; the micro-CT / EM ones: docs/results-modalities.md. ``xct``: the same network for
X-ray micro-CT nuclei at ~0.5 µm (dark nuclei), trained on three real larval zebrafish micro-CT
boxes + synthetic micro-CT (``configs/train_xct.yaml``).
"""

#: shipped checkpoint files (in this folder) by name; a light module, so configs can check names
#: without importing torch
SHIPPED_CHECKPOINTS = {"demo": "demo_bcd_cpv.pt", "fluo": "fluo_3label_cpv.pt", "fluo_synth": "fluo_bcd.pt", "em": "em.pt", "xct": "xct.pt"}
