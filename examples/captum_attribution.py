"""Attribute a soft k-means centroid to the input points with captum.

Run: `python examples/captum_attribution.py` (needs `pip install captum`, the `interpret` extra).

The model is the `"soft"` variant in float64: the assign block is softmax attention at inverse temperature γ, so
`r_ij = softmax_j(-γ |x_i - c_j|^2)`, and the update block is normalised linear attention, `c_j = Σ_i r_ij x_i /
Σ_i r_ij`. Every step is differentiable, so the quantity `f(X) = centroids[0, j, c]` after T iterations (one
coordinate of one returned centroid) has a gradient with respect to every input point.

The forward function handed to captum maps a batch of problems `(B, n, d)` to `f` of each, `(B,)`: captum's first
dimension is its batch dimension, and the model takes batches of problems, each clustered on its own.

Initial centroids. By default they are fixed constants, not derived from the points, so the gradient flows only
through the points' role in the assignments and the means. With `initial="first_points"` the model's own default is
used (the first k points are the initial centroids) and the gradient also flows through that initialisation; the
reference does the same, and the checks hold for both.

Predictions, checked against an independent plain-torch soft k-means loop written below (`soft_kmeans_torch`, no
model code) differentiated with `torch.autograd`:

- `Saliency(abs=False)` is the gradient `∂f/∂x_i`: equal to the loop's gradient to 1e-8 (in fact to rounding).
- `IntegratedGradients` (Gauss-Legendre, `n_steps` nodes) is `(X - X') ⊙ ∫_0^1 ∇f(X' + α (X - X')) dα`
  approximated by the quadrature: equal to the same quadrature of the loop's gradient, nodes and weights from
  `numpy.polynomial.legendre.leggauss`, to 1e-8 (not to rounding: captum 0.9 casts the quadrature weights to
  float32, which moves the result by about 1e-10 here).
- Completeness: the attributions sum to `f(X) - f(X')`. With the baseline `X'` where every point sits at the data
  mean `x̄`, every responsibility-weighted mean of identical points is `x̄`, so `f(X') = x̄_c` exactly; and `f(X)` is
  the NumPy `reference.soft_kmeans` centroid. captum's convergence delta (sum of attributions minus `f(X) - f(X')`)
  is small (the quadrature's error).

Gradients need `torch.enable_grad()` where the caller runs under `torch.no_grad()` (the test suite does); the
functions here enable it themselves.
"""

import numpy as np
import torch
from captum.attr import IntegratedGradients, Saliency

from kmeans_transformer import reference
from kmeans_transformer.convert import build_model
from kmeans_transformer.validation import gaussian_mixture


FIXED_CENTROIDS = np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, -1.0]])


def make_problem(seed: int = 0, num_points: int = 40, point_dim: int = 2, num_clusters: int = 3) -> np.ndarray:
    """A Gaussian mixture `(n, d)` float64."""
    return gaussian_mixture(np.random.default_rng(seed), num_points, point_dim, num_clusters)


def build_soft(num_clusters: int, point_dim: int, num_iterations: int, inverse_temperature: float):
    """float64 soft k-means (`variant="soft"`) at inverse temperature γ."""
    return build_model(
        num_clusters, point_dim, num_iterations, variant="soft", dtype="float64",
        inverse_temperature=inverse_temperature,
    )


def initial_centroids(points: torch.Tensor, centroids, initial: str) -> torch.Tensor:
    """`(B, k, d)` initial centroids: the fixed constants, or the first k points of each problem."""
    k = len(centroids)
    if initial == "fixed":
        return torch.as_tensor(centroids, dtype=points.dtype).expand(points.shape[0], -1, -1)
    if initial == "first_points":
        return points[:, :k]
    raise ValueError(f"initial must be 'fixed' or 'first_points', got {initial!r}")


def centroid_coordinate(model, centroids, cluster: int, coordinate: int, initial: str = "fixed"):
    """The forward function for captum: points `(B, n, d)` -> `centroids[:, cluster, coordinate]` `(B,)`."""

    def forward(points: torch.Tensor) -> torch.Tensor:
        # None: the model's default, the first k points of each problem
        start = initial_centroids(points, centroids, initial) if initial == "fixed" else None
        return model(points, centroids=start).centroids[:, cluster, coordinate]

    return forward


def soft_kmeans_torch(points, centroids, num_iterations: int, inverse_temperature: float, cluster: int, coordinate: int,
                      initial: str = "fixed") -> torch.Tensor:
    """The independent reference: soft k-means as a plain torch loop on `(B, n, d)`, returning `c_T[:, j, c]` `(B,)`."""
    c = initial_centroids(points, centroids, initial)
    for _ in range(num_iterations):
        distances = ((points[:, :, None, :] - c[:, None, :, :]) ** 2).sum(dim=-1)  # (B, n, k)
        r = torch.softmax(-inverse_temperature * distances, dim=-1)
        c = (r.transpose(1, 2) @ points) / r.sum(dim=1)[..., None]
    return c[:, cluster, coordinate]


def saliency(model, points, centroids, cluster, coordinate, initial="fixed") -> np.ndarray:
    """captum's `Saliency(abs=False)`: `∂ centroids[0, j, c] / ∂ points` `(n, d)`."""
    with torch.enable_grad():
        inputs = torch.as_tensor(points)[None].clone().requires_grad_(True)
        attributions = Saliency(centroid_coordinate(model, centroids, cluster, coordinate, initial)).attribute(
            inputs, abs=False
        )
    return attributions[0].detach().numpy()


def reference_gradient(points, centroids, num_iterations, inverse_temperature, cluster, coordinate, initial="fixed"):
    """The gradient of the plain-torch loop by `torch.autograd.grad`, `(n, d)`."""
    with torch.enable_grad():
        inputs = torch.as_tensor(points)[None].clone().requires_grad_(True)
        value = soft_kmeans_torch(inputs, centroids, num_iterations, inverse_temperature, cluster, coordinate, initial)
        (gradient,) = torch.autograd.grad(value.sum(), inputs)
    return gradient[0].numpy()


def mean_baseline(points) -> np.ndarray:
    """Every point at the data mean: soft k-means maps every centroid to that mean."""
    return np.broadcast_to(points.mean(axis=0), points.shape).copy()


def integrated_gradients(model, points, centroids, cluster, coordinate, baseline, n_steps=64, initial="fixed"):
    """captum's `IntegratedGradients` (Gauss-Legendre): attributions `(n, d)` and the convergence delta."""
    with torch.enable_grad():
        method = IntegratedGradients(centroid_coordinate(model, centroids, cluster, coordinate, initial))
        attributions, delta = method.attribute(
            torch.as_tensor(points)[None],
            baselines=torch.as_tensor(baseline)[None],
            n_steps=n_steps,
            method="gausslegendre",
            return_convergence_delta=True,
        )
    return attributions[0].detach().numpy(), float(delta[0])


def reference_integrated_gradients(points, centroids, num_iterations, inverse_temperature, cluster, coordinate,
                                   baseline, n_steps=64, initial="fixed") -> np.ndarray:
    """The same Gauss-Legendre quadrature of the plain-torch loop's gradient along the straight path, `(n, d)`."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alphas, steps = 0.5 * (1 + nodes), 0.5 * weights  # from [-1, 1] to [0, 1]
    x, x0 = torch.as_tensor(points), torch.as_tensor(baseline)
    with torch.enable_grad():
        path = (x0 + torch.as_tensor(alphas)[:, None, None] * (x - x0)).requires_grad_(True)  # (n_steps, n, d)
        values = soft_kmeans_torch(path, centroids, num_iterations, inverse_temperature, cluster, coordinate, initial)
        (gradients,) = torch.autograd.grad(values.sum(), path)
    return ((torch.as_tensor(steps)[:, None, None] * gradients).sum(dim=0) * (x - x0)).numpy()


def model_value(model, points, centroids, cluster, coordinate, initial="fixed") -> float:
    """`f(X)`, the model's `centroids[0, j, c]`."""
    with torch.no_grad():
        forward = centroid_coordinate(model, centroids, cluster, coordinate, initial)
        return float(forward(torch.as_tensor(points)[None])[0])


def main(num_iterations: int = 2, inverse_temperature: float = 0.5, cluster: int = 0, coordinate: int = 1):
    points = make_problem()
    k, d = FIXED_CENTROIDS.shape
    model = build_soft(k, d, num_iterations, inverse_temperature)
    args = (num_iterations, inverse_temperature, cluster, coordinate)
    print(f"f(X) = centroids[0, {cluster}, {coordinate}] of soft k-means, "
          f"γ = {inverse_temperature}, T = {num_iterations}")

    for initial in ("fixed", "first_points"):
        start = FIXED_CENTROIDS if initial == "fixed" else points[:k]
        run = reference.soft_kmeans(points, start, num_iterations, inverse_temperature)
        expected = run.centroids[cluster, coordinate]
        value = model_value(model, points, FIXED_CENTROIDS, cluster, coordinate, initial)
        assert abs(value - expected) <= 1e-12, (value, expected)

        attributions = saliency(model, points, FIXED_CENTROIDS, cluster, coordinate, initial)
        gradient = reference_gradient(points, FIXED_CENTROIDS, *args, initial=initial)
        error = np.abs(attributions - gradient).max()
        assert error <= 1e-8, f"Saliency differs from the reference gradient by {error}"
        top = np.argsort(-np.abs(attributions).sum(axis=1))[:3]
        print(f"initial centroids {initial}: f(X) = {value:.6f} (NumPy reference {expected:.6f})")
        print(f"  Saliency = autograd of the plain-torch loop, max difference {error:.1e}; "
              f"most influential points {top.tolist()}")

    baseline = mean_baseline(points)
    f_x = model_value(model, points, FIXED_CENTROIDS, cluster, coordinate)
    f_baseline = model_value(model, baseline, FIXED_CENTROIDS, cluster, coordinate)
    assert abs(f_baseline - points.mean(axis=0)[coordinate]) <= 1e-12, "f(baseline) is not the data mean"
    attributions, delta = integrated_gradients(model, points, FIXED_CENTROIDS, cluster, coordinate, baseline)
    expected = reference_integrated_gradients(points, FIXED_CENTROIDS, *args, baseline)
    error = np.abs(attributions - expected).max()
    assert error <= 1e-8, f"IntegratedGradients differs from the reference quadrature by {error}"
    assert abs(attributions.sum() - (f_x - f_baseline)) <= 1e-6 and abs(delta) <= 1e-6
    print(f"IntegratedGradients from the all-at-the-mean baseline (f(X') = x̄_{coordinate} = {f_baseline:.6f}):")
    print(f"  = the same quadrature of the plain-torch loop, max difference {error:.1e}")
    print(f"  completeness: Σ attributions = {attributions.sum():.10f}, f(X) - f(X') = {f_x - f_baseline:.10f}, "
          f"captum's delta {delta:.1e}")


if __name__ == "__main__":
    main()
