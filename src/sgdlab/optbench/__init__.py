"""The optimizer benchmark (issue 16): equal-budget tuning, time-to-target scores, performance profiles and
confidence intervals over seeds. :mod:`sgdlab.optbench.scoring` holds the definitions."""
