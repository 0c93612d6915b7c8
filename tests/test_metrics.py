"""pydiff.metrics: the Frechet distance against scipy's matrix square root and closed forms, and the digits
evaluation (classifier accuracy, FD-digits, real-vs-real floor) on real and on broken samples."""

import pytest
import torch

from pydiff import metrics
from pydiff.models import load_digits


def _scipy_fd(a: torch.Tensor, b: torch.Tensor) -> float:
    import numpy as np
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm():
    gen = torch.Generator().manual_seed(0)
    mix_a, mix_b = torch.randn(2, 7, 7, generator=gen, dtype=torch.float64)
    a = torch.randn(333, 7, generator=gen, dtype=torch.float64) @ mix_a + 0.5
    b = (torch.randn(97, 7, generator=gen, dtype=torch.float64) @ mix_b)[:, :].T.contiguous().T  # non-contiguous
    assert not b.is_contiguous()
    fd = metrics.frechet_distance(a, b)
    assert fd == pytest.approx(_scipy_fd(a, b), rel=1e-8)
    assert metrics.frechet_distance(b, a) == pytest.approx(fd, rel=1e-8)
    assert metrics.frechet_distance(a.float(), b.float()) == pytest.approx(fd, rel=1e-4)


def test_frechet_distance_of_identical_sets_is_zero_and_gaussians_match_closed_form():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(501, 5, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1])
    assert metrics.frechet_distance(feats, feats) < 1e-9
    assert metrics.frechet_distance(feats, feats[torch.randperm(501, generator=gen)]) < 1e-9
    # diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (s_a - s_b)^2
    std_a, std_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    mean_b = torch.tensor([0.3, -0.2, 0.1])
    a = torch.randn(200_000, 3, generator=gen, dtype=torch.float64) * std_a
    b = torch.randn(200_000, 3, generator=gen, dtype=torch.float64) * std_b + mean_b
    closed = (mean_b.pow(2).sum() + (std_a - std_b).pow(2).sum()).item()
    assert metrics.frechet_distance(a, b) == pytest.approx(closed, rel=0.02)


@pytest.mark.parametrize("a, b, match", [
    (torch.randn(10), torch.randn(10, 3), "features_a must be a 2-D"),
    (torch.randn(1, 3), torch.randn(10, 3), "N >= 2"),
    (torch.randn(10, 3), torch.randn(10, 4), "same dimension"),
    (torch.full((10, 3), float("nan")), torch.randn(10, 3), "finite"),
])
def test_frechet_distance_rejects_bad_features(a, b, match):
    with pytest.raises(ValueError, match=match):
        metrics.frechet_distance(a, b)


def test_evaluate_real_digits():
    test, train = load_digits("test"), load_digits("train")
    held_out = metrics.evaluate(test.images, test.labels)
    assert held_out["accuracy"] >= 0.97
    assert held_out["fd"] < 1e-6  # the held-out set against itself
    assert held_out["fd_floor"] > 0.1  # a finite sample of other real digits is measurably different
    full_train = metrics.evaluate(train.images, train.labels)
    assert full_train["accuracy"] >= 0.99
    assert full_train["fd"] == pytest.approx(full_train["fd_floor"], rel=1e-9)  # the floor is the training set


def test_evaluate_detects_bad_samples():
    test = load_digits("test")
    gen = torch.Generator().manual_seed(2)
    wrong_labels = metrics.evaluate(test.images, (test.labels + 1) % 10)
    assert wrong_labels["accuracy"] < 0.05
    noise = metrics.evaluate(torch.rand(300, 1, 16, 16, generator=gen) * 2 - 1, torch.arange(300) % 10)
    assert noise["accuracy"] < 0.3 and noise["fd"] > 10 * noise["fd_floor"]
    # samples beyond the data range are clamped: pushing the background further out changes nothing
    darker = torch.where(test.images <= -1, torch.full_like(test.images, -3.0), test.images)
    assert metrics.evaluate(darker, test.labels)["fd"] < 1e-6


@pytest.mark.parametrize("samples, labels, exc, match", [
    (torch.randn(10, 1, 8, 8), torch.zeros(10, dtype=torch.int64), ValueError, "samples must have shape"),
    (torch.randn(10, 1, 16, 16), torch.zeros(9, dtype=torch.int64), ValueError, "labels must have shape"),
    (torch.randn(10, 1, 16, 16), torch.zeros(10), TypeError, "labels must be an int64"),
    (torch.randn(10, 1, 16, 16), torch.full((10,), 10), ValueError, r"labels must lie in \[0, 9\]"),
    (torch.full((10, 1, 16, 16), float("inf")), torch.zeros(10, dtype=torch.int64), ValueError, "finite"),
    (torch.zeros(10, 1, 16, 16, dtype=torch.int64), torch.zeros(10, dtype=torch.int64), TypeError, "floating"),
])
def test_evaluate_rejects_bad_input(samples, labels, exc, match):
    with pytest.raises(exc, match=match):
        metrics.evaluate(samples, labels)
