"""Optimizers no maintained library provides, implemented here from the papers' update rules.

Importing this package registers them (source "sgdlab").
"""

from . import apollo, gam, label_noise, local_sgd, normalized_gd, onebit_adam, psps, sps, svag, xgrad, zo  # noqa: F401
