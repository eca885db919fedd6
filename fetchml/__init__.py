"""Fetch ML: a self-hosted, multi-user queue for ML experiment jobs."""
