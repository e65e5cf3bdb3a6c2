"""Benchmark suites for FLAME models: datasets, templates, metrics and the runner.

Results follow CLIP_benchmark's JSON layout and metric names.
"""
