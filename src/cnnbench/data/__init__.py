"""Where batches come from. Every source yields (images, labels) already on the device, normalised.

A source has `batches()` (an endless iterator), `images_per_epoch` (for the epoch column) and
`describe()` (for the run header). Synthetic data is here; real data formats plug in beside it.
"""
