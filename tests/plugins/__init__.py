"""Pytest plugins of the test suite (see tests/plugins/services.py)."""
