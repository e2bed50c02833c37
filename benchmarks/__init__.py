"""Seeded benchmarks of Arbiter's decisions and compute, side by side with the alternatives.

`simulator` and `faults` produce the Prometheus counters of simulated experiments,
`scrape` turns them into what a method sees, `scenario` reads the YAML scenarios,
`methods` holds Arbiter and each method it is compared with, `runner` plays one
(scenario, method) cell, `report`/`targets`/`reference` score it, and `suite` runs it all
for `arbiter bench`. `compute` times one production analysis iteration.
"""
