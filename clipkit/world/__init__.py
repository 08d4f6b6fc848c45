"""The procedural world: scenes, the caption grammar and its hard negatives, rendering styles,
corruptions and distribution shifts. Every image is a pure function of (spec, seed).

Imports only clipkit.core.
"""
