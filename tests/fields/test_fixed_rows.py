"""fields/fixed_rows.py: MLPs see a bounded set of row counts, with the outputs and gradients of one call."""

import pytest
import torch

from turbonerf.fields.fixed_rows import apply_in_fixed_rows, padded_rows, row_counts


def test_padded_rows_cover_every_count_with_little_padding():
    assert row_counts(64) == {8, 16, 24, 32, 40, 48, 56, 64}
    for chunk in (64, 1 << 16):
        for m in range(1, chunk + 1):
            r = padded_rows(m, chunk)
            assert m <= r <= chunk and r - m < max(chunk // 8, 256)
    assert len(row_counts()) == 13  # the default chunk: a handful of shapes, whatever the number of points


@pytest.mark.parametrize("n", [0, 1, 300, 8192, 70_000, 200_003])
def test_same_outputs_and_gradients_as_one_call(n):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 7, bias=False), torch.nn.ReLU(), torch.nn.Linear(7, 3, bias=False))
    x = torch.randn(n, 5, requires_grad=True)
    seen = []
    mlp[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    y = apply_in_fixed_rows(mlp, x)
    assert y.shape == (n, 3)
    assert set(seen) <= row_counts() or n == 0
    y.square().sum().backward()
    gx, gw = x.grad.clone(), mlp[0].weight.grad.clone()
    x.grad, mlp[0].weight.grad = None, None
    ref = mlp(x)
    ref.square().sum().backward()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, mlp[0].weight.grad, rtol=1e-4, atol=1e-4)
