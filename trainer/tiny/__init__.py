"""Tiny random models of the four families (and CCExpert): the embedded default's stand-in for real checkpoints.

Only tests, benchmarks and the quickstart use them; production code never imports this package.
"""
