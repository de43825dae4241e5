"""Checks for NaN and Inf that allocate nothing the size of the data."""
import numpy as np


def all_finite(data):
    """True when ``data`` holds no NaN nor Inf.

    NaN propagates through min and max, and an Inf is one of them: two
    reductions, instead of a boolean array as large as the data (a volume
    or a subject's points at load).
    """
    data = np.asarray(data)
    if data.size == 0:
        return True
    return bool(np.isfinite(data.min()) and np.isfinite(data.max()))
