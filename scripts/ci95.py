"""Means over seeds with a two-sided 95 % Student-t half-width, for the table scripts
(scripts/paper-table.py, scripts/router-auc-table.py)."""
import math

# Two-sided 95 % quantiles of Student's t, by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df):
    keys = sorted(k for k in T95 if k <= df)
    return T95[keys[-1]] if keys else float("nan")


def mean_ci(xs):
    """(mean, 95 % half-width or None with one value, count) of the values that are numbers."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None, len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, t95(len(xs) - 1) * sd / math.sqrt(len(xs)), len(xs)
