"""Networks shipped with blockseg (``demo_bcd_cpv.pt``: see :func:`blockseg.models.demo_checkpoint_path`)."""
