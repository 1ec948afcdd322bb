"""Prefect flows: compose tasks into the study pipeline and its phases."""
