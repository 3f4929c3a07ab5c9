#!/usr/bin/env python3
"""Independent reference for the RDP of the sampled Gaussian mechanism.

Reads lines "q z alpha" on stdin and prints, for each, log(A_alpha) where

    A_alpha = integral over x of N(x; 0, z^2) * ((1 - q) + q * exp((2x - 1) / (2 z^2)))^alpha

computed by brute-force numerical integration (trapezoid rule in log space
with numpy), not by any series. RDP(alpha) = log(A_alpha) / (alpha - 1).
The C accountant (server/dp.c) uses the series of Mironov et al. (2019);
tests/unit/check_dp.c compares the two.

With --epsilon, reads lines "q z rounds delta" instead and prints epsilon:
the integrated RDP at the pinned orders times the rounds, converted with
the bound of Balle et al. (2020, Prop. 12 of arXiv:2004.00010v4),
minimised over the orders; an end-to-end check written independently of
the C code.
"""
import sys

import numpy as np


def log_integrand(x, q, z, alpha):
    log_normal = -0.5 * (x / z) ** 2 - np.log(z) - 0.5 * np.log(2 * np.pi)
    u = (2 * x - 1) / (2 * z * z)
    log_mix = np.logaddexp(np.log1p(-q), np.log(q) + u)
    return log_normal + alpha * log_mix


def log_trapezoid(f, x):
    """log of the trapezoid integral of exp(f) over the grid x."""
    m = np.max(f)
    w = np.exp(f - m)
    return m + np.log(np.trapz(w, x))


def log_a(q, z, alpha, points=400001):
    # The integrand's mass lies between the N(0, z^2) bulk and, for large
    # alpha, a bump near x = alpha; scan widely, then refine where the
    # integrand is within e^-60 of its peak.
    lo, hi = -60.0 * z - 2.0, alpha + 60.0 * z + 2.0
    x = np.linspace(lo, hi, points)
    f = log_integrand(x, q, z, alpha)
    keep = np.nonzero(f > np.max(f) - 60.0)[0]
    a = x[max(keep[0] - 1, 0)]
    b = x[min(keep[-1] + 1, len(x) - 1)]
    x = np.linspace(a, b, points)
    return log_trapezoid(log_integrand(x, q, z, alpha), x)


def pinned_orders():
    return ([1 + i / 10.0 for i in range(1, 100)] + list(range(11, 64)) +
            [128, 256, 512, 1024])


def epsilon(q, z, rounds, delta):
    best = np.inf
    for a in pinned_orders():
        a = float(a)
        rdp = rounds * log_a(q, z, a, 40001) / (a - 1)
        if a <= 1.01:
            continue
        eps = rdp + np.log1p(-1 / a) - (np.log(delta) + np.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--epsilon":
        for line in sys.stdin:
            parts = line.split()
            if len(parts) != 4:
                continue
            q, z, rounds, delta = (float(p) for p in parts)
            print("%.17g" % epsilon(q, z, rounds, delta))
        return 0
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 3:
            continue
        q, z, alpha = (float(p) for p in parts)
        print("%.17g" % log_a(q, z, alpha))
    return 0


if __name__ == "__main__":
    sys.exit(main())
