"""Seeded benchmarks of Arbiter's analytics: compute cost now, decision quality later."""
