"""Foundations every layer may use: atomic files, paths and slugs, result records, statistics.

Imports nothing else of clipkit.
"""
