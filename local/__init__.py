"""Local stand-ins for cluster services, used by `arbiter run` and the tests."""
