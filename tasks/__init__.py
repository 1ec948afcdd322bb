"""Prefect tasks: thin shells over the sgdlab library (caching keys, retries, tags)."""
