"""Defaults of speed knobs, shared by the Python API, the CLI and the run config.

A speed knob changes how fast a result comes, never the result: predict's output is the same
(within one storage step) for every batch size, worker count, thread count and block shape
(``tests/predict/test_speed_knobs.py``). One default each, here, so that the doors agree anyway.
"""

#: patches per forward pass of predict (``predict(batch_size=)``, ``--batch-size``,
#: ``predict.batch_size``); the automatic patch is sized for a batch of this many patches,
#: whatever batch a run uses, so the batch size never changes the patch
DEFAULT_BATCH_SIZE = 2
