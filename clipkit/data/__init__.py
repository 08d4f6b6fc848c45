"""Data: safe image decoding, the paper's transform, image-caption datasets (synthetic, CSV,
webdataset), classification datasets, hard-negative captions for real text.

Imports clipkit.core and clipkit.world.
"""
