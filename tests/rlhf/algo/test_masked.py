"""Masked reductions against plain Python over the selected elements."""

from __future__ import annotations

import statistics

import torch

from rlhf.algo.masked import masked_mean, masked_var, masked_whiten


def test_against_python_statistics():
    x = torch.randn(4, 7, dtype=torch.float64)
    mask = torch.rand(4, 7) > 0.4
    picked = [float(v) for v, m in zip(x.flatten(), mask.flatten(), strict=True) if m]
    assert abs(float(masked_mean(x, mask)) - statistics.fmean(picked)) < 1e-12
    assert abs(float(masked_var(x, mask)) - statistics.variance(picked)) < 1e-12
    rows = masked_mean(x, mask, dim=1)
    for b in range(4):
        row = [float(v) for v, m in zip(x[b], mask[b], strict=True) if m]
        assert abs(float(rows[b]) - (statistics.fmean(row) if row else 0.0)) < 1e-12
    w = masked_whiten(x, mask)
    mu, sd = statistics.fmean(picked), statistics.stdev(picked)
    expected = torch.tensor([[(float(v) - mu) / sd if m else 0.0 for v, m in zip(xr, mr, strict=True)]
                             for xr, mr in zip(x, mask, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)


def test_empty_mask_gives_zero_not_nan():
    x = torch.randn(3, 4)
    none = torch.zeros(3, 4, dtype=torch.bool)
    assert float(masked_mean(x, none)) == 0.0
    assert torch.equal(masked_mean(x, none, dim=1), torch.zeros(3))
