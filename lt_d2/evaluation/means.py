# Copyright (c) lt_d2 contributors.
"""Means over the defined entries of a metric array, the two conventions lt_d2's evaluators use.

* :func:`mean_of_defined`: NaN marks an undefined value (a class without ground truth has no
  AP); the mean leaves them out and is NaN when nothing is defined (lt_d2's own reports);
* :func:`lvis_mean`: lvis-api marks "no ground truth" with -1 and summarizes with
  ``np.mean(s[s > -1])``, -1 when nothing is defined. The fast LVIS evaluator uses it so that its
  metrics stay bit-identical to lvis-api's (np.mean's pairwise summation depends on the order
  of the elements, which boolean indexing keeps).
"""
import numpy as np


def mean_of_defined(values):
    """Mean (a float) of the entries of ``values`` that are not NaN; NaN when all are."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def lvis_mean(values):
    """lvis-api's summary mean: ``np.mean`` of the entries > -1, -1.0 when there are none."""
    selected = values[values > -1]
    return -1.0 if len(selected) == 0 else float(np.mean(selected))
