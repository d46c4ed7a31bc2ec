# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""`KMeans`: a scikit-learn estimator whose every iteration is one layer of the k-means transformer."""

import json
import math
import numbers
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file, save_file
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, _is_arraylike_not_scalar, check_is_fitted, validate_data
from tqdm.auto import tqdm

from .configuration_kmeans_transformer import KMeansTransformerConfig
from .cards import render_fitted_card
from .convert import ESTIMATOR_ARRAYS_NAME, ESTIMATOR_CONFIG_NAME, saving_checkpoint
from .hub import push_checkpoint
from .initialization import batched_kmeans_plusplus, random_points
from .modeling_kmeans_transformer import DTYPES, KMeansTransformerModel, labelled_inertia
from .variants import ALGORITHM_PARAMETER_NAMES as PARAMETER_NAMES, VARIANTS, VariantSpec


# Fitted attributes saved under an earlier name in `kmeans_estimator.json`, and their name now.
RENAMED_FITTED_ATTRIBUTES = {"_n_restarts": "n_restarts_"}
ALGORITHMS = ("lloyd", "elkan")
EMPTY_CLUSTERS = ("relocate", "keep")


class KMeans(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    r"""
    k-means clustering (and its variants) run by the k-means transformer, with scikit-learn's `KMeans` interface.

    Every iteration is one pass of the looped (shared-weights) layer of a [`KMeansTransformerModel`], so `max_iter`
    needs no new weights. The `n_init` restarts run together as one batch through the model: one forward call per
    iteration whatever `n_init` is (`final_assignment=False`: one assign block per iteration), a restart leaving the
    batch when it converges, then one call that assigns the points to every restart's centroids (the labels and
    inertia of the result). Convergence follows scikit-learn:
    after iteration `i`, stop if the labels equal those of iteration `i - 1` ("strict" convergence; variants whose
    update depends on the labels only, `VariantSpec.label_determined`), or if
    `Σ_j |c_j^(i+1) - c_j^(i)|^2 <= tol * mean_l Var(x_l)` (the mean per-coordinate variance of the points as the
    model sees them: unit-normalised for a `unit_norm` variant such as `"spherical"`). The restart with the lowest
    inertia is kept (the first one on ties).

    With `variant="lloyd"` in float64 and the same initial centroids (and sample weights), labels, centroids and
    `n_iter_` are scikit-learn's `KMeans(algorithm="lloyd")`'s.

    Sample weights (`fit(X, sample_weight=w)`) enter the model itself (`KMeansTransformerModel.forward`'s
    `sample_weight`): point `i` counts as `w_i` copies of itself in every update, the inertia is `Σ_i w_i |x_i -
    c_a(i)|^2`, and k-means++ and `"random"` draw with the weights (as scikit-learn); an array or callable `init`
    ignores them. A point of weight 0 is labelled but moves no centroid.

    Empty clusters. With `empty_clusters="relocate"` (the default, scikit-learn's rule, so that code written for
    scikit-learn gets its results), when an iteration leaves clusters without any (weighted) point, the points
    farthest from their entering centroids (the farthest for the first empty cluster, the next farthest for the
    next) are moved to those clusters and the update block runs again on the relabelled points
    (`model.finalize(model.accumulate(...))`): the emptied cluster's centroid becomes that point, and its former
    cluster loses it. This is the one step the estimator takes outside the model's layer, after it; it applies to the
    variants whose update is a hard mean of labelled points (lloyd, spherical, trimmed). `"keep"`: an empty cluster
    keeps its centroid, as the model's own update block does.

    Parameters:
        n_clusters (`int`, defaults to 8): number of clusters `k`.
        init (`"k-means++"`, `"random"`, callable or array of shape `(n_clusters, n_features)`, defaults to
            `"k-means++"`): greedy k-means++ (`kmeans_plusplus`, in torch), `k` distinct random points, a callable
            `init(X, n_clusters, random_state)` returning one restart's `(n_clusters, n_features)` centroids (called
            once per restart), or the initial centroids.
        n_init (`int` or `"auto"`, defaults to `"auto"`): number of restarts; `"auto"` is 10 for `"random"` and a
            callable `init`, 1 for `"k-means++"` and an array (as scikit-learn). An array `init` runs once.
        max_iter (`int`, defaults to 300): maximum number of iterations per restart.
        tol (`float`, defaults to 1e-4): relative tolerance on the centroid shift (see above); 0 stops only on exact
            convergence.
        random_state (`int`, `numpy.random.RandomState` or `None`): seeds the initialisation (and the random draws
            of a `random` variant, such as Gumbel k-medoids); an int gives reproducible fits.
        variant (`str`, defaults to `"lloyd"`): one of `kmeans_transformer.variants.VARIANT_NAMES`: `"lloyd"`,
            `"soft"`, `"spherical"`, `"trimmed"`, `"sparse"`, `"kmedoids"`, `"gmm"`, `"fuzzy"` (see
            `KMeansTransformerConfig`). `labels_` are the hard labels of every variant (-1 for points trimmed by
            `"trimmed"`); `inertia_` is the k-means objective of those labels.
        inverse_temperature, trim_quantile, trim_fraction, medoid_selection, reg_covar, fuzzifier: the variant
            parameters (`kmeans_transformer.variants.PARAMETER_NAMES`), as in `KMeansTransformerConfig`; each is
            stored as given, and `None` takes the variant's default.
        device (`str` or `torch.device`, *optional*): where the model runs; defaults to the CPU.
        dtype (`"float32"`, `"float64"` or `None`): the arithmetic; `None` keeps float32 input in float32 and uses
            float64 otherwise (as scikit-learn).
        verbose (`int`, defaults to 0): if > 0, print what scikit-learn prints on stdout: "Initialization complete"
            per restart, the inertia of every iteration (of the entering centroids and the iteration's labels) and
            the convergence ("strict convergence", or the centre shift within the tolerance). The restarts then run
            one after the other rather than as one batch (the same results).
        copy_x (`bool`, defaults to True): accepted for scikit-learn's signature; the input is never modified
            (scikit-learn centres the data in place when `copy_x=False`; the model needs no centring).
        algorithm (`"lloyd"` or `"elkan"`, defaults to `"lloyd"`): accepted for scikit-learn's signature. Both are
            Lloyd's iterates; the model always computes them with the construction (Elkan's triangle-inequality
            bounds are an implementation detail of scikit-learn that gives the same iterates).
        empty_clusters (`"relocate"` or `"keep"`, defaults to `"relocate"`): what happens to a cluster that an
            iteration empties (see above).
        progress_bar (`bool`, defaults to False): show a tqdm progress bar over the iterations (the command line's).

    Sparse input (`scipy.sparse` CSR/CSC matrices and arrays) is accepted by `fit`, `predict`, `transform` and
    `score` and densified (memory: the dense `n * d` array in the chosen dtype). Memory: the restarts share one batch
    of `n_init * (n + k)` tokens, of width `d + 1` on the fast path (`"lloyd"`, `"spherical"`) and
    `config.hidden_size` otherwise.

    Attributes:
        cluster_centers_ (`ndarray` of shape `(n_clusters, n_features)`): the centroids (medoids for `"kmedoids"`,
            means for `"gmm"`, unit vectors for `"spherical"`).
        labels_ (`ndarray` of shape `(n_samples,)`): the label of each training point under `cluster_centers_`.
        inertia_ (`float`): sum of squared distances of the labelled points to their centroid.
        n_iter_ (`int`): iterations run by the kept restart.
        n_restarts_ (`int`): the number of restarts run (`n_init` resolved: `"auto"` and an array `init` give it);
            `_n_init` holds the same number, under the name scikit-learn uses.
        n_features_in_ (`int`), feature_names_in_ (`ndarray`, when `X` has string column names).
        initial_centers_ (`ndarray` of shape `(n_clusters, n_features)`): the kept restart's initial centroids.
        <state>_ (`ndarray` of shape `(n_clusters,)`): one per state the variant carries besides the centroids
            (`VariantSpec.state`): for `"gmm"`, `variances_` and `weights_`, the variances `σ_j^2` and mixing
            weights `π_j`.
        model_ ([`KMeansTransformerModel`]): the fitted model: `num_iterations=0` and the centroids stored as its
            weights, so `model_(points).labels` are `predict(points)`.

    Example:

    ```python
    >>> import numpy as np
    >>> from kmeans_transformer import KMeans
    >>> X = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 0.0], [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]])
    >>> kmeans = KMeans(n_clusters=2, random_state=0).fit(X)
    >>> sorted(kmeans.cluster_centers_.tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    >>> bool(kmeans.predict([[0.0, 0.0], [12.0, 3.0]]).tolist() == kmeans.predict([[1.0, 2.0], [10.0, 2.0]]).tolist())
    True

    ```
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        random_state=None,
        variant="lloyd",
        inverse_temperature=None,
        trim_quantile=None,
        trim_fraction=None,
        medoid_selection=None,
        reg_covar=None,
        fuzzifier=None,
        device=None,
        dtype=None,
        verbose=0,
        copy_x=True,
        algorithm="lloyd",
        empty_clusters="relocate",
        progress_bar=False,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.variant = variant
        self.inverse_temperature = inverse_temperature
        self.trim_quantile = trim_quantile
        self.trim_fraction = trim_fraction
        self.medoid_selection = medoid_selection
        self.reg_covar = reg_covar
        self.fuzzifier = fuzzifier
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.empty_clusters = empty_clusters
        self.progress_bar = progress_bar

    # ------------------------------------------------------------------------------------------------------------
    # Parameters
    # ------------------------------------------------------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # scipy.sparse input is accepted (and densified)
        return tags

    def _model_config(self, n_features: int, fitted: bool) -> KMeansTransformerConfig:
        """
        The config of the looped model (`fitted=False`: the fit's, whose defaults are computed from the data) or of
        `model_` (`fitted=True`: stored centroids); the config's own checks (`variants.get_variant`,
        `VariantSpec.resolve_parameters`) name a bad variant or variant parameter. NumPy scalars (a parameter grid's
        `np.int64(3)`, `np.float32(0.5)`) are passed on as the Python numbers they hold; the estimator keeps them as
        given (`get_params`).
        """
        spec = VARIANTS.get(self.variant) if isinstance(self.variant, str) else None
        if spec is not None and spec.trainable:
            raise ValueError(
                f"variant={self.variant!r} is a trainable layer, not a clustering algorithm the estimator runs: train "
                "it with `kmeans-transformer train` (or `kmeans_transformer.learned.train_learned`) and loop the "
                "checkpoint's model."
            )
        return KMeansTransformerConfig(
            num_clusters=_python_scalar(self.n_clusters),
            point_dim=n_features,
            num_iterations=0,
            share_layers=True,
            variant=_python_scalar(self.variant),
            fitted_centroids=fitted,
            **{name: _python_scalar(getattr(self, name)) for name in PARAMETER_NAMES},
        )

    def _check_params(self, X: np.ndarray) -> int:
        """Check the scalar parameters against the data; return the number of restarts."""
        n_samples = X.shape[0]
        if not isinstance(self.n_clusters, numbers.Integral) or isinstance(self.n_clusters, bool) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be an integer >= 1, got {self.n_clusters!r}.")
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        if not isinstance(self.max_iter, numbers.Integral) or isinstance(self.max_iter, bool) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}.")
        if isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real) or not (0 <= self.tol < np.inf):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}.")
        explicit = _is_arraylike_not_scalar(self.init)
        named = isinstance(self.init, str) and self.init in ("k-means++", "random")
        if not (explicit or named or callable(self.init)):
            raise ValueError(
                "init must be 'k-means++', 'random', a callable or an array of shape (n_clusters, n_features), "
                f"got {self.init!r}."
            )
        for name, allowed in (("algorithm", ALGORITHMS), ("empty_clusters", EMPTY_CLUSTERS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        if not isinstance(self.copy_x, (bool, np.bool_)):
            raise ValueError(f"copy_x must be a bool, got {self.copy_x!r}.")
        if self.algorithm == "elkan" and self.n_clusters == 1:  # scikit-learn's warning, word for word
            warnings.warn(
                "algorithm='elkan' doesn't make sense for a single cluster. Using 'lloyd' instead.",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.n_init == "auto":  # scikit-learn's rule
            return 10 if callable(self.init) or (isinstance(self.init, str) and self.init == "random") else 1
        if not isinstance(self.n_init, numbers.Integral) or isinstance(self.n_init, bool) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1 or 'auto', got {self.n_init!r}.")
        if explicit and self.n_init != 1:
            warnings.warn(
                f"Explicit initial center position passed: performing only one init in {type(self).__name__} "
                f"instead of n_init={self.n_init}.",
                RuntimeWarning,
                stacklevel=3,
            )
            return 1
        return int(self.n_init)

    def _torch_dtype(self, X: np.ndarray) -> torch.dtype:
        if self.dtype is None:
            return torch.float32 if X.dtype == np.float32 else torch.float64
        if isinstance(self.dtype, torch.dtype) and self.dtype in DTYPES.values():
            return self.dtype
        name = np.dtype(self.dtype).name if not isinstance(self.dtype, (str, torch.dtype)) else str(self.dtype)
        name = name.removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"dtype must be 'float32', 'float64' or None, got {self.dtype!r}.")
        return DTYPES[name]

    def _torch_device(self) -> torch.device:
        return check_device(self.device)

    def _initial_centers(
        self, X: np.ndarray, points: torch.Tensor, n_restarts: int, random_state, sample_weight=None, init=None,
        n_clusters=None,
    ) -> torch.Tensor:
        """`(n_restarts, k, d)` initial centroids (k-means++ and `"random"` drawn with the sample weights)."""
        init = self.init if init is None else init
        k, d = int(self.n_clusters if n_clusters is None else n_clusters), points.shape[1]
        if isinstance(init, str):
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            generator = torch.Generator(device=points.device).manual_seed(seed)
            draw = batched_kmeans_plusplus if init == "k-means++" else random_points
            return draw(points, k, n_restarts, generator=generator, sample_weight=sample_weight)[0]
        if _is_arraylike_not_scalar(init):
            restarts = [init]
        else:
            restarts = [init(X, k, random_state) for _ in range(n_restarts)]
        centers = [np.asarray(centers) for centers in restarts]
        for center in centers:
            if center.ndim != 2 or center.shape[0] != k:
                raise ValueError(
                    f"The shape of the initial centers {center.shape} does not match the number of clusters {k}."
                )
            if center.shape[1] != d:
                raise ValueError(
                    f"The shape of the initial centers {center.shape} does not match the number of features of the "
                    f"data {d}."
                )
            if not np.issubdtype(center.dtype, np.number) or not np.isfinite(center).all():
                raise ValueError("The initial centers (init) must be finite numbers.")
        return torch.as_tensor(np.stack(centers), dtype=points.dtype, device=points.device)

    def _init_centroids(
        self, X, x_squared_norms, init, random_state, sample_weight, init_size=None, n_centroids=None
    ) -> np.ndarray:
        """
        One restart's initial centroids `(n_centroids, n_features)` with scikit-learn's private signature (its tests
        call it): our k-means++ or random draw with the sample weights, an array, or a callable. `x_squared_norms`
        and `init_size` are accepted and not needed.
        """
        X = self._dense(X)
        points = torch.as_tensor(X, dtype=self._torch_dtype(X), device=self._torch_device())
        weights = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
        centers = self._initial_centers(
            X, points, 1, check_random_state(random_state), weights, init=init, n_clusters=n_centroids
        )
        return centers[0].cpu().numpy()

    @staticmethod
    def _dense(X):
        """A `scipy.sparse` matrix or array as a dense ndarray (others unchanged)."""
        return X.toarray() if sp.issparse(X) else X

    def _validated(self, X, reset: bool) -> np.ndarray:
        """`X` checked (`validate_data`: float64 or float32, CSR/CSC sparse accepted), as a dense ndarray."""
        X = validate_data(
            self, X, dtype=[np.float64, np.float32], accept_sparse=["csr", "csc"], ensure_min_samples=1, reset=reset
        )
        return self._dense(X)

    def _sample_weight(self, sample_weight, X, device, dtype) -> torch.Tensor | None:
        """The checked sample weights as a tensor, or None (scikit-learn's `_check_sample_weight`, non-negative)."""
        if sample_weight is None:
            return None
        weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True, copy=True)
        if not weights.sum() > 0:
            raise ValueError("sample_weight must not be all 0: no point would count.")
        return torch.as_tensor(weights, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------------------------
    # Fitting
    # ------------------------------------------------------------------------------------------------------------

    def fit(self, X, y=None, sample_weight=None):
        """
        Compute the clustering of `X` `(n_samples, n_features)` (an array, a DataFrame or a `scipy.sparse` matrix);
        `y` is ignored; `sample_weight` `(n_samples,)`: non-negative weights (None: all 1). Returns the estimator.
        """
        X = self._validated(X, reset=True)
        self._n_init = n_restarts = self._check_params(X)
        device, dtype = self._torch_device(), self._torch_dtype(X)
        weights = self._sample_weight(sample_weight, X, device, dtype)
        looped = KMeansTransformerModel(self._model_config(X.shape[1], fitted=False)).to(device=device, dtype=dtype)
        points = torch.tensor(X, device=device, dtype=dtype)
        random_state = check_random_state(self.random_state)
        with torch.no_grad():
            initial = self._initial_centers(X, points, n_restarts, random_state, weights)
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            generator = torch.Generator(device=device).manual_seed(seed)  # the draws of a `random` variant
            if self.verbose:  # one restart after the other, printing as scikit-learn
                runs = [self._run_restarts(looped, points, initial[[i]], generator, weights) for i in range(n_restarts)]
                names = runs[0]["parameters"]
                result = {
                    "parameters": {name: torch.cat([run["parameters"][name] for run in runs]) for name in names},
                    **{name: torch.cat([run[name] for run in runs]) for name in ("labels", "inertia", "n_iter")},
                }
            else:
                result = self._run_restarts(looped, points, initial, generator, weights)
        best = int(np.argmin(result["inertia"].cpu().numpy()))  # the first of equal inertias, as scikit-learn

        self.model_ = model = KMeansTransformerModel(self._model_config(X.shape[1], fitted=True)).to(device, dtype)
        model.set_fitted_parameters(**{name: values[best] for name, values in result["parameters"].items()})
        self._set_fitted_attributes(model)
        self.labels_ = result["labels"][best].cpu().numpy()
        self.inertia_ = float(result["inertia"][best])
        self.n_iter_ = int(result["n_iter"][best])
        self.initial_centers_ = initial[best].cpu().numpy()
        self.n_restarts_ = n_restarts
        self._n_features_out = int(self.n_clusters)  # `get_feature_names_out`: kmeans0, kmeans1, ...

        distinct = int(np.count_nonzero(np.bincount(self.labels_[self.labels_ >= 0], minlength=int(self.n_clusters))))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than n_clusters ({self.n_clusters}). "
                "Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _set_fitted_attributes(self, model: KMeansTransformerModel) -> None:
        """
        The attributes that the model's stored parameters determine: `cluster_centers_`, and `<name>_` for each
        state the variant carries (those of another variant, left by an earlier fit, are removed).
        """
        for name in {name for spec in VARIANTS.values() for name in spec.state_names}:
            self.__dict__.pop(f"{name}_", None)
        for name, values in model.embeddings.fitted_parameters().items():
            attribute = "cluster_centers_" if name == "centroids" else f"{name}_"
            setattr(self, attribute, values.detach().cpu().numpy().copy())

    def _tolerance(self, points: torch.Tensor, spec: VariantSpec) -> float:
        """scikit-learn's absolute tolerance: `tol` times the mean per-coordinate variance of the points as seen."""
        if self.tol == 0:
            return 0.0
        return float(spec.seen_points(points).to(torch.float64).var(dim=0, unbiased=False).mean()) * float(self.tol)

    def _run_restarts(self, model, points, initial, generator, sample_weight=None) -> dict:
        """
        Run all restarts as one batch, one forward call of the looped layer per iteration (without the assignment
        head), until each converges; then one call assigns the points to every restart's final parameters.
        Returns per restart: the final `parameters` (`centroids` and the variant's carried state, by name), their
        `labels` and `inertia`, and `n_iter`.
        """
        spec, n_restarts = model.config.variant_spec, initial.shape[0]
        tolerance = self._tolerance(points, spec)
        relocates = self.empty_clusters == "relocate" and _relocatable(model)

        def batch(size):
            return points.expand(size, *points.shape)

        def inputs(size):
            call = {"generator": generator} if spec.random else {}
            if sample_weight is not None:
                call["sample_weight"] = sample_weight.expand(size, -1)
            return call

        if self.verbose:
            print("Initialization complete")

        final = {"centroids": initial.clone()}
        final.update({name: initial.new_zeros(n_restarts, int(self.n_clusters)) for name in spec.state_names})
        n_iter = torch.zeros(n_restarts, dtype=torch.long, device=points.device)
        active = torch.arange(n_restarts, device=points.device)
        current, previous_labels = {"centroids": initial}, None  # the state starts at the model's default
        progress = tqdm(
            total=self.max_iter, desc="k-means iterations", unit="it", disable=not self.progress_bar, leave=False
        )
        # The compact engine keeps its tokens between iterations; the token engine is called once per iteration.
        iterations = model.compact_iterations(batch(n_restarts), initial, inputs(n_restarts).get("sample_weight"))
        # The compact engine on CPU sums in a fixed order: the same labels give bit-identical centroids.
        fixed_order, relocated_now = iterations is not None and points.device.type == "cpu", False
        with progress:
            for iteration in range(self.max_iter):
                # labels: the assignment made in this iteration, from the centroids entering it.
                masses = None  # known to the compact engine: the relocation then needs no pass over the labels
                if iterations is not None:
                    labels, masses = iterations.step()
                    updated = {"centroids": iterations.centroids.clone()}
                else:
                    output = model(
                        batch(len(active)), num_iterations=1, final_assignment=False, output_assignments=False,
                        **current, **inputs(len(active)),
                    )
                    labels, updated = output.labels, _carried_parameters(output, spec)
                relocated_before, relocated_now = relocated_now, False
                if relocates:
                    relocated = _relocated(model, points, sample_weight, labels, current, updated, masses)
                    relocated_now = relocated is not updated["centroids"]
                    if relocated is not updated["centroids"] and iterations is not None:
                        iterations.set_centroids(relocated)
                    updated["centroids"] = relocated
                shift = ((updated["centroids"] - current["centroids"]) ** 2).sum(dim=(1, 2))
                strict = torch.zeros_like(shift, dtype=torch.bool)
                if previous_labels is not None:  # scikit-learn's strict convergence: the labels did not change
                    exact = fixed_order and not (relocated_now or relocated_before)
                    strict = _unchanged(labels, previous_labels, shift, exact)
                done = strict | (shift <= tolerance)
                if self.verbose:
                    seen = spec.seen_points(points)[None]
                    weighted = inputs(1).get("sample_weight")
                    inertia = float(labelled_inertia(seen, current["centroids"], labels, weighted)[0])
                    print(f"Iteration {iteration}, inertia {inertia}.")
                    if bool(strict[0]):
                        print(f"Converged at iteration {iteration}: strict convergence.")
                    elif bool(done[0]):
                        print(
                            f"Converged at iteration {iteration}: center shift {float(shift[0])} within tolerance "
                            f"{tolerance}."
                        )
                if iteration + 1 == self.max_iter:
                    done[:] = True
                current, previous_labels = updated, labels if spec.label_determined else None
                if bool(done.any()):  # the finished restarts leave the batch
                    for name, values in updated.items():
                        final[name][active[done]] = values[done]
                    n_iter[active[done]] = iteration + 1
                    active, current = active[~done], {name: values[~done] for name, values in updated.items()}
                    previous_labels = labels[~done] if spec.label_determined else None
                    if iterations is not None:
                        iterations.keep(torch.nonzero(~done)[:, 0])
                progress.update()
                progress.set_postfix(restarts_running=f"{len(active)}/{n_restarts}")
                if len(active) == 0:
                    break
        # The labels and inertia of the final parameters (scikit-learn's last E-step).
        assigned = model(batch(n_restarts), num_iterations=0, output_assignments=False, **final, **inputs(n_restarts))
        return {"parameters": final, "labels": assigned.labels, "inertia": assigned.inertia, "n_iter": n_iter}

    # ------------------------------------------------------------------------------------------------------------
    # Using the fitted clusters
    # ------------------------------------------------------------------------------------------------------------

    def _fitted_points(self, X) -> torch.Tensor:
        """
        `X` (any number of rows >= 1) checked against the fit (number of features, finite values; for a `unit_norm`
        variant such as `"spherical"`, no row of norm 0, which has no direction: a ValueError naming the first, as
        `fit` refuses them), on the fitted model's device and dtype.
        """
        check_is_fitted(self)
        X = self._validated(X, reset=False)
        spec = self.model_.config.variant_spec
        if spec.unit_norm:
            zero = np.flatnonzero(~X.any(axis=1))
            if zero.size:
                raise ValueError(
                    f"Row {zero[0]} of X has norm 0 ({zero.size} such row(s)) and no direction: {spec.title} assigns "
                    "a point by its direction."
                )
        centroids = self.model_.embeddings.fitted_parameters()["centroids"]
        return torch.tensor(X, device=centroids.device, dtype=centroids.dtype)

    def _fitted_output(self, X, sample_weight=None):
        """
        The fitted model's output on `X`: assignment to the stored centroids (`num_iterations=0`, which the model
        runs on any number of points, fewer than `n_clusters` included), with the sample weights.
        """
        points = self._fitted_points(X)
        weights = self._sample_weight(sample_weight, points, points.device, points.dtype)
        with torch.no_grad():
            return self.model_(points, num_iterations=0, output_assignments=False, sample_weight=weights)

    def fit_predict(self, X, y=None, sample_weight=None):
        """`fit(X, sample_weight=sample_weight)`, then the training labels `labels_`."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def fit_transform(self, X, y=None, sample_weight=None):
        """`fit(X, sample_weight=sample_weight)`, then `transform(X)`."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def predict(self, X, sample_weight=None):
        """
        The cluster of each row of `X` under the fitted centroids (-1 for points trimmed by `"trimmed"`).
        `sample_weight` is accepted, as older scikit-learn did; the nearest centroid does not depend on it, except
        for `"trimmed"`, whose trimming quantiles are weighted.
        """
        return self._fitted_output(X, sample_weight).labels[0].cpu().numpy()

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the (weighted) inertia of `X` under the fitted centroids (higher is better, as scikit-learn)."""
        return -float(self._fitted_output(X, sample_weight).inertia[0])

    def transform(self, X):
        """
        Distances `|x_i - c_j|` from each row of `X` to every centroid, `(n_samples, n_clusters)` (from the rows as
        the model sees them: unit-normalised for a `unit_norm` variant such as `"spherical"`).
        """
        points = self._fitted_points(X)
        points = self.model_.config.variant_spec.seen_points(points)
        centers = self.model_.embeddings.fitted_parameters()["centroids"].detach()
        distances = torch.cdist(points, centers, compute_mode="donot_use_mm_for_euclid_dist")
        return distances.cpu().numpy()

    def centroid_trajectory(self, X, sample_weight=None) -> np.ndarray:
        """
        The kept restart's centroids before the first iteration and after each, `(n_iter_ + 1, k, d)`, read from
        the looped model run again on the training data `X` (with the fit's `sample_weight`) from `initial_centers_`,
        empty clusters relocated as in the fit (Gumbel medoid draws are not replayed).
        """
        points = self._fitted_points(X)
        weights = self._sample_weight(sample_weight, points, points.device, points.dtype)
        looped = KMeansTransformerModel(self._model_config(points.shape[1], fitted=False)).to(points.device, points.dtype)
        spec = looped.config.variant_spec
        relocates = self.empty_clusters == "relocate" and _relocatable(looped)
        current = {"centroids": torch.tensor(self.initial_centers_, device=points.device, dtype=points.dtype)[None]}
        trajectory = [current["centroids"][0]]
        with torch.no_grad():
            for _ in range(self.n_iter_):
                output = looped(points, num_iterations=1, final_assignment=False, sample_weight=weights, **current)
                updated = _carried_parameters(output, spec)
                if relocates:
                    updated["centroids"] = _relocated(looped, points, weights, output.labels, current, updated)
                current = updated
                trajectory.append(current["centroids"][0])
        return torch.stack(trajectory).cpu().numpy()

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, overwrite: bool = False) -> None:
        """
        Save the fitted estimator as a Hugging Face checkpoint: the model (config, `model.safetensors` with the
        fitted centroids as weights, and its code for `trust_remote_code`), the estimator's parameters and fitted
        attributes (`kmeans_estimator.json`, `kmeans_estimator.safetensors`) and a model card. `AutoModel` loads
        the model, which assigns points to the fitted centroids; [`KMeans.from_pretrained`] loads the estimator.

        As transformers' `save_pretrained` (`kmeans_transformer.convert.saving_checkpoint`): `save_directory` may
        exist and hold a previous checkpoint; each file is written under a temporary name and renamed into place,
        the files of the previous checkpoint that this one does not write (stale weight shards) are removed, and
        files of no checkpoint are left untouched; an exception while writing leaves the previous checkpoint as it
        was. A `README.md` that this package did not write is kept, with a warning, and the card is not written,
        unless `overwrite=True`, which replaces it.
        """
        check_is_fitted(self)
        card = render_fitted_card(self)
        record, arrays = self._estimator_record()
        with saving_checkpoint(save_directory, overwrite=overwrite) as temporary:
            self.model_.save_pretrained(temporary)
            (temporary / ESTIMATOR_CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
            save_file(arrays, str(temporary / ESTIMATOR_ARRAYS_NAME))
            card.save(temporary / "README.md")

    def _estimator_record(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What `kmeans_estimator.json` (parameters and fitted scalars) and `.safetensors` (arrays) hold."""
        parameters = {name: _jsonable(value) for name, value in self.get_params().items() if name != "init"}
        if hasattr(self.init, "__array__"):
            parameters["init"] = "array"
        elif callable(self.init):  # code cannot be stored: recorded by name, replaced by k-means++ on loading
            parameters["init"] = {"callable": getattr(self.init, "__qualname__", repr(self.init))}
        else:
            parameters["init"] = self.init
        fitted = {
            "inertia_": self.inertia_,
            "n_iter_": self.n_iter_,
            "n_features_in_": self.n_features_in_,
            "n_restarts_": self.n_restarts_,
        }
        if hasattr(self, "feature_names_in_"):
            fitted["feature_names_in_"] = self.feature_names_in_.tolist()
        arrays = {"labels_": self.labels_.astype(np.int64), "initial_centers_": np.ascontiguousarray(self.initial_centers_)}
        if hasattr(self.init, "__array__"):
            arrays["init"] = np.ascontiguousarray(np.asarray(self.init, dtype=np.float64))
        return {"parameters": parameters, "fitted": fitted}, arrays

    def push_to_hub(self, repo_id: str, *, exist_ok: bool = True, **push_options):
        """
        Push the fitted estimator to the Hub repository `repo_id`: what [`save_pretrained`] writes (the model, the
        estimator's files, the card), written to a temporary directory and pushed as one commit by
        `kmeans_transformer.hub.push_checkpoint` (`push_options`: `private`, `revision`, `commit_message`,
        `commit_description`, `create_pr`, `token`, `announce`). As with transformers' `push_to_hub`, an existing
        repository gets a new commit unless `exist_ok=False`. [`KMeans.from_pretrained`]`(repo_id)` loads it back.
        """
        check_is_fitted(self)
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = Path(directory) / "checkpoint"
            self.save_pretrained(checkpoint)
            return push_checkpoint(checkpoint, repo_id, exist_ok=exist_ok, **push_options)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "KMeans":
        """
        Load a fitted estimator saved by `save_pretrained` (a directory or a Hub repository id; `kwargs` go to
        `KMeansTransformerModel.from_pretrained`). A checkpoint with fitted centroids but no estimator files (for
        instance one written with `fitted_centroids=True` by hand) gives an estimator with the model's parameters,
        `cluster_centers_` and `n_features_in_` only.

        The estimator files are data, read against a fixed schema (`ESTIMATOR_SCHEMA`): `kmeans_estimator.json`
        holds `parameters` (the estimator's `__init__` parameters) and `fitted` (`inertia_`, `n_iter_`,
        `n_features_in_`, `n_restarts_`, optionally `feature_names_in_`); `kmeans_estimator.safetensors` holds
        `labels_`, `initial_centers_` and, for an array `init`, `init`. A key outside the schema, a value of the
        wrong type or shape, a missing entry, or a value that disagrees with the model (`n_clusters`, `variant`, a
        variant parameter, `n_features_in_`) is a ValueError naming it. The fitted parameters (`cluster_centers_`
        and a variant's state, such as gmm's `variances_`) come from the model's weights, never from these files.
        """
        model = KMeansTransformerModel.from_pretrained(pretrained_model_name_or_path, **kwargs)
        config = model.config
        if not config.fitted_centroids:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds no fitted centroids (config.fitted_centroids is False): it is "
                "an algorithm checkpoint, not a fitted KMeans."
            )
        record, arrays = _read_estimator_files(pretrained_model_name_or_path, kwargs)
        source = f"{ESTIMATOR_CONFIG_NAME} of {pretrained_model_name_or_path}"
        parameters = {
            "n_clusters": config.num_clusters,
            "variant": config.variant,
            **{name: getattr(config, name) for name in PARAMETER_NAMES},
        }
        fitted = {}
        if record is not None:
            parameters.update(_checked_parameters(record["parameters"], parameters, source))
            fitted = _checked_fitted(record["fitted"], config, source)
            arrays = _checked_arrays(arrays, config, parameters.get("init") == "array", source)
            parameters["init"] = _loaded_init(parameters.get("init", "k-means++"), arrays)
        estimator = cls(**parameters)
        estimator.model_ = model
        estimator._n_features_out = config.num_clusters
        estimator._set_fitted_attributes(model)
        estimator.n_features_in_ = config.point_dim
        for name, value in fitted.items():
            setattr(estimator, name, value)
        if "n_restarts_" in fitted:
            estimator._n_init = fitted["n_restarts_"]
        for name in ("labels_", "initial_centers_"):
            if name in arrays:
                setattr(estimator, name, arrays[name])
        return estimator


def _relocatable(model: KMeansTransformerModel) -> bool:
    """Whether the variant's update is a hard mean of the labelled points (lloyd, spherical, trimmed)."""
    update = model.layers[0].update
    return update.assignment_kind == "labels" and update.sums_over_points


def _unchanged(labels, previous_labels, shift, fixed_order: bool) -> torch.BoolTensor:
    """
    Per restart, whether `labels` `(batch, n)` equal `previous_labels`. With `fixed_order` (a label-determined update
    summed in a fixed order, no cluster relocated in this iteration or the one before) unchanged labels give exactly
    the centroids they gave before, so only the restarts whose `shift` is 0 are compared: most iterations then read
    no labels at all.
    """
    if not fixed_order:
        return (labels == previous_labels).all(dim=1)
    unchanged = torch.zeros_like(shift, dtype=torch.bool)
    still = torch.nonzero(shift == 0)[:, 0]
    if len(still):
        unchanged[still] = (labels[still] == previous_labels[still]).all(dim=1)
    return unchanged


def _relocated(model, points, sample_weight, labels, entering, updated, masses=None) -> torch.Tensor:
    """
    scikit-learn's relocation of empty clusters, per restart of the batch: the clusters that no counted point (real,
    weight > 0) was assigned to in this iteration take the counted points farthest from their entering centroids,
    the farthest first (none when every distance is 0), and the update block runs again on the relabelled points
    (`model.finalize(model.accumulate(...))`). `masses` `(batch, k)`: each cluster's count or total weight in this
    assignment, where the caller knows them. Returns the centroids `(batch, k, d)`.
    """
    k, batch_size = model.config.num_clusters, labels.shape[0]
    if masses is not None and not bool((masses == 0).any()):
        return updated["centroids"]
    counted = labels >= 0 if sample_weight is None else (labels >= 0) & (sample_weight > 0)
    weights = counted.to(points.dtype) if sample_weight is None else sample_weight * counted
    masses = torch.zeros(batch_size, k + 1, dtype=points.dtype, device=points.device)
    masses.scatter_add_(1, torch.where(counted, labels, k), weights.expand_as(labels))
    empty = masses[:, :k] == 0
    if not bool(empty.any()):
        return updated["centroids"]
    centroids = updated["centroids"].clone()
    seen = model.config.variant_spec.seen_points(points)
    for restart in torch.nonzero(empty.any(dim=1))[:, 0].tolist():
        own = entering["centroids"][restart][labels[restart].clamp(min=0)]
        distances = ((seen - own) ** 2).sum(dim=-1).masked_fill(~counted[restart], -1.0)
        if not float(distances.max()) > 0:  # more clusters than distinct points: nothing to relocate
            continue
        targets = torch.nonzero(empty[restart])[:, 0]
        farthest = torch.argsort(distances, descending=True, stable=True)[: len(targets)]
        relabelled = labels[restart].clone()
        relabelled[farthest] = targets[: len(farthest)]
        weighted = {} if sample_weight is None else {"sample_weight": sample_weight[None]}
        statistics = model.accumulate(relabelled[None], points[None], **weighted)
        parameters = {name: values[[restart]] for name, values in entering.items()}
        centroids[restart] = model.finalize(statistics, parameters)["centroids"][0]
    return centroids


def _carried_parameters(output, spec: VariantSpec) -> dict[str, torch.Tensor]:
    """The parameters an output carries to the next call: its `centroids` and the variant's carried state, by name."""
    return {name: getattr(output, name) for name in ("centroids", *spec.state_names)}


def check_device(device) -> torch.device:
    """`device` (`None` for the CPU) as a `torch.device`, or a ValueError if it is not one or is not available."""
    try:
        device = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}.") from error
    if device.type == "meta":
        raise ValueError("device 'meta' cannot hold data: choose a device that can hold the points, such as 'cpu'.")
    backend = getattr(torch, device.type, None) if device.type in ("cuda", "mps", "xpu") else None
    if backend is not None and not backend.is_available():
        raise ValueError(f"device {str(device)!r} is not available to this torch installation.")
    return device


def _python_scalar(value):
    """A NumPy scalar (`np.int64(3)`, `np.float32(0.5)`, `np.str_`) as the Python value it holds; others unchanged."""
    return value.item() if isinstance(value, (np.integer, np.floating, np.bool_, np.str_)) else value


def _jsonable(value):
    """A parameter as JSON: numbers and strings as they are, dtypes and devices as strings, random states as None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value).removeprefix("torch.")
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    return None  # a RandomState instance cannot be saved; the fitted attributes are saved instead


# ---------------------------------------------------------------------------------------------------------------------
# Reading the estimator files: a fixed schema, nothing else
# ---------------------------------------------------------------------------------------------------------------------


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return _integer(value) or (isinstance(value, float) and math.isfinite(value))


def _optional(check):
    return lambda value: value is None or check(value)


def _init_record(value) -> bool:
    if isinstance(value, dict):
        return set(value) == {"callable"} and isinstance(value["callable"], str)
    return isinstance(value, str) and value in ("k-means++", "random", "array")


# `kmeans_estimator.json` and `kmeans_estimator.safetensors`: every key they may hold, with its check and what it
# must be. `KMeans.from_pretrained` refuses anything else.
ESTIMATOR_SCHEMA = {
    "parameters": {
        "n_clusters": (_integer, "an integer"),
        "init": (_init_record, "'k-means++', 'random', 'array' or {'callable': NAME}"),
        "n_init": (lambda value: value == "auto" or _integer(value), "'auto' or an integer"),
        "max_iter": (_integer, "an integer"),
        "tol": (_number, "a finite number"),
        "random_state": (_optional(_integer), "an integer or null"),
        "variant": (lambda value: isinstance(value, str), "a string"),
        **{
            name: (_optional(lambda value: isinstance(value, str) or _number(value)), "a number, a string or null")
            for name in PARAMETER_NAMES
        },
        "device": (_optional(lambda value: isinstance(value, str)), "a string or null"),
        "dtype": (_optional(lambda value: isinstance(value, str)), "a string or null"),
        "verbose": (lambda value: isinstance(value, int), "an integer"),
        "copy_x": (lambda value: isinstance(value, bool), "a bool"),
        "algorithm": (lambda value: value in ALGORITHMS, f"one of {list(ALGORITHMS)}"),
        "empty_clusters": (lambda value: value in EMPTY_CLUSTERS, f"one of {list(EMPTY_CLUSTERS)}"),
        "progress_bar": (lambda value: isinstance(value, bool), "a bool"),
    },
    "fitted": {
        "inertia_": (lambda value: _number(value) and value >= 0, "a finite number >= 0"),
        "n_iter_": (lambda value: _integer(value) and value >= 0, "an integer >= 0"),
        "n_features_in_": (_integer, "an integer"),
        "n_restarts_": (lambda value: _integer(value) and value >= 1, "an integer >= 1"),
        "feature_names_in_": (
            lambda value: isinstance(value, list) and all(isinstance(name, str) for name in value), "a list of strings"
        ),
    },
    "arrays": {
        "labels_": "integers of shape (n_samples,), each -1 or a cluster index",
        "initial_centers_": "finite floats of shape (n_clusters, n_features)",
        "init": "finite floats of shape (n_clusters, n_features), only for init='array'",
    },
}
REQUIRED_FITTED = ("inertia_", "n_iter_", "n_features_in_", "n_restarts_")


def _read_estimator_files(path, kwargs) -> tuple[dict | None, dict[str, np.ndarray]]:
    """
    `kmeans_estimator.json` (checked to be an object of the two objects `parameters` and `fitted`) and the arrays of
    `kmeans_estimator.safetensors`, or `(None, {})` when the checkpoint has no estimator files.
    """
    from safetensors import SafetensorError
    from transformers.utils import cached_file

    lookup = {key: kwargs[key] for key in ("revision", "cache_dir", "token", "local_files_only") if key in kwargs}
    found = cached_file(path, ESTIMATOR_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **lookup)
    if not found:
        return None, {}
    source = f"{ESTIMATOR_CONFIG_NAME} of {path}"
    try:
        record = json.loads(Path(found).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{source} is not JSON: {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{source} must hold an object with `parameters` and `fitted`, got {type(record).__name__}.")
    for key in record:
        if key not in ("parameters", "fitted"):
            raise ValueError(f"{source} holds the unknown key {key!r}; it may hold `parameters` and `fitted` only.")
    for key in ("parameters", "fitted"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"{source} must hold an object `{key}`.")
    arrays_path = cached_file(path, ESTIMATOR_ARRAYS_NAME, _raise_exceptions_for_missing_entries=False, **lookup)
    if not arrays_path:
        raise ValueError(
            f"{path} holds {ESTIMATOR_CONFIG_NAME} but not {ESTIMATOR_ARRAYS_NAME}: the fitted estimator's arrays "
            "(labels_, initial_centers_) are missing."
        )
    try:
        return record, load_file(arrays_path)
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"{ESTIMATOR_ARRAYS_NAME} of {path} cannot be read as safetensors arrays: {error}") from None


def _check_keys(values: dict, section: str, source: str) -> None:
    """Each key of `values` known to `ESTIMATOR_SCHEMA[section]` and its value of the schema's type."""
    schema = ESTIMATOR_SCHEMA[section]
    for name, value in values.items():
        if name not in schema:
            raise ValueError(f"{source}: unknown {section} entry {name!r} (known: {', '.join(schema)}).")
        check, expected = schema[name]
        if not check(value):
            raise ValueError(f"{source}: {section} entry {name!r} must be {expected}, got {value!r}.")


def _checked_parameters(saved: dict, model_values: dict, source: str) -> dict:
    """
    The saved parameters, checked against the schema and against the model's config (`n_clusters`, `variant` and
    the variant parameters: a saved value other than None must be the model's).
    """
    _check_keys(saved, "parameters", source)
    for name, value in model_values.items():
        if saved.get(name) is not None and saved[name] != value:
            raise ValueError(f"{source}: parameter {name!r} is {saved[name]!r}, but the model's config has {value!r}.")
    return saved


def _checked_fitted(saved: dict, config: KMeansTransformerConfig, source: str) -> dict:
    """The fitted scalars (earlier names renamed), checked against the schema and the model (`n_features_in_`)."""
    fitted = {RENAMED_FITTED_ATTRIBUTES.get(name, name): value for name, value in saved.items()}
    _check_keys(fitted, "fitted", source)
    missing = [name for name in REQUIRED_FITTED if name not in fitted]
    if missing:
        raise ValueError(f"{source}: fitted entry {missing[0]!r} is missing.")
    if fitted["n_features_in_"] != config.point_dim:
        raise ValueError(
            f"{source}: n_features_in_ is {fitted['n_features_in_']}, but the model's point_dim is {config.point_dim}."
        )
    if "feature_names_in_" in fitted:
        if len(fitted["feature_names_in_"]) != config.point_dim:
            raise ValueError(f"{source}: feature_names_in_ must name {config.point_dim} features.")
        fitted["feature_names_in_"] = np.asarray(fitted["feature_names_in_"], dtype=object)
    return fitted


def _checked_arrays(arrays: dict, config: KMeansTransformerConfig, init_is_array: bool, source: str) -> dict:
    """The arrays of `kmeans_estimator.safetensors`: exactly the schema's (`init` only for an array init), checked."""
    source = source.replace(ESTIMATOR_CONFIG_NAME, ESTIMATOR_ARRAYS_NAME)
    expected = ["labels_", "initial_centers_", *(["init"] if init_is_array else [])]
    for name in arrays:
        if name not in expected:
            raise ValueError(f"{source}: unexpected array {name!r} (expected {', '.join(expected)}).")
    for name in expected:
        if name not in arrays:
            raise ValueError(f"{source}: the array {name!r} is missing ({ESTIMATOR_SCHEMA['arrays'][name]}).")
    k, d = config.num_clusters, config.point_dim
    labels = arrays["labels_"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or ((labels < -1) | (labels >= k)).any():
        raise ValueError(f"{source}: labels_ must be {ESTIMATOR_SCHEMA['arrays']['labels_']} (< {k}).")
    for name in expected[1:]:
        values = arrays[name]
        if values.shape != (k, d) or not np.issubdtype(values.dtype, np.floating) or not np.isfinite(values).all():
            raise ValueError(f"{source}: {name} must be {ESTIMATOR_SCHEMA['arrays'][name]} = {(k, d)}.")
    return arrays


def _loaded_init(init, arrays: dict):
    """The `init` parameter of a loaded estimator: the saved array, the name, or k-means++ for a callable."""
    if init == "array":
        return arrays["init"]
    if isinstance(init, dict):
        warnings.warn(
            f"The estimator was fitted with the callable init {init['callable']!r}, which a checkpoint cannot store; "
            "the loaded estimator has init='k-means++' (its fitted attributes are intact).",
            UserWarning,
            stacklevel=3,
        )
        return "k-means++"
    return init


# ---------------------------------------------------------------------------------------------------------------------
# scikit-learn's functions, on this package's estimator and initialisation
# ---------------------------------------------------------------------------------------------------------------------


def k_means(
    X,
    n_clusters,
    *,
    sample_weight=None,
    init="k-means++",
    n_init="auto",
    max_iter=300,
    verbose=False,
    tol=1e-4,
    random_state=None,
    copy_x=True,
    algorithm="lloyd",
    return_n_iter=False,
    **kwargs,
):
    """
    scikit-learn's `k_means` function: fit [`KMeans`] (the other keywords, such as `variant`, go to it) and return
    `(cluster_centers_, labels_, inertia_)`, with `n_iter_` last when `return_n_iter`.
    """
    estimator = KMeans(
        n_clusters=n_clusters, init=init, n_init=n_init, max_iter=max_iter, verbose=verbose, tol=tol,
        random_state=random_state, copy_x=copy_x, algorithm=algorithm, **kwargs,
    ).fit(X, sample_weight=sample_weight)
    result = (estimator.cluster_centers_, estimator.labels_, estimator.inertia_)
    return (*result, estimator.n_iter_) if return_n_iter else result


def kmeans_plusplus(X, n_clusters, *, sample_weight=None, x_squared_norms=None, random_state=None, n_local_trials=None):
    """
    scikit-learn's `kmeans_plusplus`: greedy (weighted) k-means++ seeds of `X` `(n_samples, n_features)` (an
    array or a `scipy.sparse` matrix), drawn by this package's torch implementation
    (`initialization.batched_kmeans_plusplus`) from a generator seeded by `random_state`. `x_squared_norms` is
    checked and not needed. Returns `(centers, indices)`: `(n_clusters, n_features)` rows of `X` (in its dtype,
    float64 or float32) and their `(n_clusters,)` indices.
    """
    from sklearn.utils import check_array

    X = check_array(X, accept_sparse=["csr", "csc"], dtype=[np.float64, np.float32])
    weights = _check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True)
    if X.shape[0] < n_clusters:
        raise ValueError(f"n_samples={X.shape[0]} should be >= n_clusters={n_clusters}.")
    if x_squared_norms is not None:
        x_squared_norms = check_array(x_squared_norms, dtype=X.dtype, ensure_2d=False)
        if x_squared_norms.shape[0] != X.shape[0]:
            raise ValueError(
                f"The length of x_squared_norms {x_squared_norms.shape[0]} should be equal to the length of "
                f"n_samples {X.shape[0]}."
            )
    dense = X.toarray() if sp.issparse(X) else X
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    points = torch.as_tensor(np.ascontiguousarray(dense))
    _, indices = batched_kmeans_plusplus(
        points, int(n_clusters), 1, torch.Generator().manual_seed(seed), n_local_trials=n_local_trials,
        sample_weight=None if sample_weight is None else torch.as_tensor(weights, dtype=torch.float64),
    )
    indices = indices[0].numpy()
    return dense[indices].copy(), indices


__all__ = ["KMeans", "k_means", "kmeans_plusplus"]
