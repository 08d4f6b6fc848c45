"""Analyses over probe and evaluation results: paired comparison, effective robustness,
cross-dataset studies, training experiments.

Imports every layer below it (core, world, data, models, train, evaluate, probes); never report or explore.
"""
