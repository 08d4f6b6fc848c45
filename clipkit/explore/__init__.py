"""The explorer: its computations (compute) and its ipywidgets (widgets).

Imports core, world, data, models, evaluate; never report.
"""
