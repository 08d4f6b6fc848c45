"""Reports: papermill runner, notebook parameters, the index and results table.

Imports clipkit.core (and clipkit.models/evaluate lazily, to run); nothing imports it but the CLI and notebooks.
"""
