"""The integration tests' shared fixtures: the session's queue of local runs."""

from tests.support.local_runs import local_runs

__all__ = ["local_runs"]
