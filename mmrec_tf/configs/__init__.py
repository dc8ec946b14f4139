"""Flagfiles: the quickstart (synthetic data) and one per real dataset."""
