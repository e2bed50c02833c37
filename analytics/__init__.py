"""Arbiter's decision engine: pure numpy/scipy statistics over an experiment and its measurements.

Nothing here does I/O. The `assess` function, `arbiter analyze` and the benchmarks all call
`analytics.analysis.analyze`, so a decision is reproducible from the Experiment alone.
"""
