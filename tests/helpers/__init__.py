"""Helpers shared by the core tests (``tests/test_core_*.py``)."""
