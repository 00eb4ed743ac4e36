"""Small helpers shared by the benchmark scripts in this directory."""


def percentile(sorted_xs, p):
    """Linear interpolation between order statistics; None without samples."""
    if not sorted_xs:
        return None
    k = (len(sorted_xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def loadavg():
    """The 1, 5 and 15 minute load averages, as one string."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
