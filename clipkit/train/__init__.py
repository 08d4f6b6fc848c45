"""Contrastive training: config, the loop, the step, losses, logging, checkpoints.

Imports clipkit.core, clipkit.world, clipkit.data and clipkit.models; never clipkit.evaluate or
clipkit.probes (the CLI hands a run its evaluation hook).
"""
