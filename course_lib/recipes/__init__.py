"""Training recipes: data + model + loss + ``fit``, one file per model.

A recipe is what a lesson notebook, a benchmark and a test all run, with different lengths:
the notebook trains live for a minute, the benchmark to its target, the test a few steps.
Imports flow one way: recipes use ``data``, ``models`` and ``train``; nothing imports recipes.
"""
