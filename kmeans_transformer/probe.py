"""Look inside a k-means transformer: one problem followed through the layers, read off its tokens and attention weights.

`trace` runs the model on one problem with `output_attentions=True` and `output_hidden_states=True` (the dense token
path, never the compact fast path) and keeps, per layer `t = 1..T`:

    centroids[t]      the position slice of the centroid tokens after layer t   (centroids[0]: as embedded)
    labels[t - 1]     argmax_j of the code slot y_i after layer t, -1 where y_i = 0   (the assignment a(i) of layer t)
    attentions[b][t - 1]  the weights of block b (`BLOCK_NAMES`) in layer t, head 0

Under the exact `"hardmax"` attention of Lloyd's algorithm, the assign weights are the one-hot rows `e_a(i)` and the
update weights of centroid j are `1 / |S_j|` on its members `S_j` (and 1 on its own token when `S_j` is empty).

Pictures (`plot_centroid_trajectories`, `plot_assignment_changes`, `plot_attention_maps`) need matplotlib; the
interactive view (`export_bertviz`) needs bertviz: `pip install "kmeans-transformer[probe]"`. Figures have a fixed
size: `figsize` times `DPI` pixels, with the figsize constants below.
"""

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import torch

from .modeling_kmeans_transformer import BLOCK_NAMES, KMeansTransformerOutput
from .validation import layer_trajectory
from . import plotting


DPI = 100
TRAJECTORY_FIGSIZE = (8.0, 6.0)  # 800 x 600 pixels
CHANGES_FIGSIZE = (10.0, 6.0)  # 1000 x 600 pixels
ATTENTION_FIGSIZE = (12.0, 8.0)  # 1200 x 800 pixels
# Points and centroids are named on the axes of the attention maps up to this many tokens.
_TICK_LIMIT = 40

_BERTVIZ_HINT = 'The interactive attention view needs bertviz; install it with: pip install "kmeans-transformer[probe]"'


@dataclass
class Trace:
    """
    One problem followed through the layers (real points only: padding is dropped; arrays are float64 copies).

    points: `(n, d)` the points as the model sees them (unit-normalised for a `unit_norm` variant, `"spherical"`).
    centroids: `(T + 1, k, d)` the initial centroids (as embedded), then the centroids after each layer.
    labels: `(T, n)` the label layer t assigned: argmax of the code slot, -1 where it is 0 (a trimmed point).
    attentions: block name (`BLOCK_NAMES`) -> `(T, queries, keys)` weights of head 0: point_erase `(T, n, 1)`, assign
        `(T, n, k)`, centroid_erase `(T, k, 1)`, update `(T, k, n + k)` (on the points, then on the centroid tokens).
    output: the model's output (with `hidden_states` and `attentions`, padding included).
    point_index: `(n,)` the index of each real point in the input.
    """

    points: np.ndarray
    centroids: np.ndarray
    labels: np.ndarray
    attentions: dict[str, np.ndarray]
    output: KMeansTransformerOutput
    point_index: np.ndarray

    @property
    def num_layers(self) -> int:
        """T, the number of layers (iterations) that ran."""
        return len(self.labels)

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[1]

    @property
    def final_labels(self) -> np.ndarray:
        """`(n,)` the model's `labels` output: the assignment head's labels against the returned centroids."""
        return self.output.labels[0].cpu().numpy()[self.point_index]

    @property
    def assignment_changes(self) -> np.ndarray:
        """
        `(T,)` the number of points whose label after layer t differs from the one before it. Before the first layer
        the code slot is empty (label -1 everywhere), so the first entry counts the points the first layer labels
        (all n, but for trimmed points); a fixed point of the algorithm shows as a 0.
        """
        previous = np.concatenate([np.full((1, self.labels.shape[1]), -1), self.labels[:-1]]) if self.num_layers else self.labels
        return (self.labels != previous).sum(axis=1)


@torch.no_grad()
def trace(model, points, centroids=None, attention_mask=None, **inputs) -> Trace:
    """
    Run `model` on one problem, `points` `(n, d)` or `(1, n, d)` (with `centroids` `(k, d)` or `(1, k, d)` and
    `attention_mask` `(n,)` or `(1, n)` if given; other `inputs` go to the model), asking for the attention weights
    and hidden states, and return its `Trace`. Raises `ValueError` for a batch of more than one problem, and when the
    model's attention implementation returns no weights (a kernel of one's own; `"sdpa"` and the chunked hardmax give
    way to the dense kernel of the same weights when these are asked for).

    >>> from kmeans_transformer.convert import build_model
    >>> points = [[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]]
    >>> t = trace(build_model(2, 2, 2, dtype="float64"), points, centroids=[[0.0, 0.0], [10.0, 0.0]])
    >>> t.labels.tolist(), t.assignment_changes.tolist()
    ([[0, 0, 1, 1], [0, 0, 1, 1]], [4, 0])
    >>> t.attentions["update"][0].tolist()  # centroid j -> x0, x1, x2, x3, c0, c1
    [[0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5, 0.0, 0.0]]
    >>> t.centroids[-1].tolist()
    [[0.0, 0.5], [10.0, 0.5]]
    """
    points = _one_problem(points, "points", 2)
    centroids = None if centroids is None else _one_problem(centroids, "centroids", 2)
    attention_mask = None if attention_mask is None else _one_problem(attention_mask, "attention_mask", 1)
    for name in ("output_attentions", "output_hidden_states", "return_dict"):
        inputs.pop(name, None)
    output = model(
        points, centroids=centroids, attention_mask=attention_mask,
        output_attentions=True, output_hidden_states=True, return_dict=True, **inputs,
    )
    config = model.config
    hidden_states = output.hidden_states
    num_points = points.shape[-2]
    num_layers = len(hidden_states) - 1
    if num_layers and (not output.attentions or any(w is None for layer in output.attentions for w in layer)):
        raise ValueError(
            f"The model's attention implementation ({config._attn_implementation!r}) returns no attention weights, "
            "so there is nothing to trace; use attn_implementation='eager' (softmax) or 'hardmax' (exact argmax)."
        )
    if attention_mask is None:
        point_index = np.arange(num_points)
    else:
        point_index = np.flatnonzero(torch.as_tensor(attention_mask).reshape(-1).cpu().numpy().astype(bool))
    numpy = lambda tensor: tensor.detach().cpu().double().numpy()  # noqa: E731
    slices = config.token_slices
    states = numpy(torch.stack([h[0] for h in hidden_states]))  # (T + 1, n + k, hidden)
    trajectory = layer_trajectory(config, hidden_states, num_points)
    keys = np.concatenate([point_index, num_points + np.arange(config.num_clusters)])
    selections = {  # rows and columns of each block's weights that belong to real tokens
        "point_erase": (point_index, slice(None)),
        "assign": (point_index, slice(None)),
        "centroid_erase": (slice(None), slice(None)),
        "update": (slice(None), keys),
    }
    attentions = {}
    for b, name in enumerate(BLOCK_NAMES):
        rows, columns = selections[name]
        if num_layers:
            weights = np.stack([numpy(layer[b][0, 0]) for layer in output.attentions])
            attentions[name] = weights[:, rows][:, :, columns]
        else:
            shape = {"point_erase": (len(point_index), 1), "assign": (len(point_index), config.num_clusters),
                     "centroid_erase": (config.num_clusters, 1), "update": (config.num_clusters, len(keys))}[name]
            attentions[name] = np.zeros((0, *shape))
    return Trace(
        points=states[0, point_index, slices["position"]],
        centroids=states[:, num_points:, slices["position"]],
        labels=trajectory["labels"].cpu().numpy().astype(np.int64)[:, point_index],
        attentions=attentions,
        output=output,
        point_index=point_index,
    )


def _one_problem(values, name: str, problem_dims: int):
    """`values` with the batch dimension of one problem, or a `ValueError` for a batch of more."""
    if not isinstance(values, (torch.Tensor, np.ndarray)):
        values = np.asarray(values)
    shape = tuple(values.shape)
    if len(shape) == problem_dims + 1:
        if shape[0] != 1:
            raise ValueError(
                f"trace follows one problem, but `{name}` holds a batch of {shape[0]}; pass one problem, e.g. `{name}[i]`."
            )
        return values
    if len(shape) != problem_dims:
        raise ValueError(f"`{name}` must have {problem_dims} or {problem_dims + 1} dimensions, got shape {shape}.")
    return values[None]


# ---------------------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------------------


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def plot_centroid_trajectories(trace: Trace, path=None, overwrite: bool = False, ax=None):
    """
    The points coloured by their final label (grey crosses for -1), and each centroid's path through the layers:
    hollow marker at its initial position, a dot after each layer, filled marker at the end. Points of d > 2 are drawn
    on their first two principal components (`plotting.project_2d`). Draws on `ax` if given, else on a new
    `TRAJECTORY_FIGSIZE` figure at `DPI`; saves a PNG at `path` if given (an existing file only with `overwrite`).
    Returns the figure.
    """
    plotting.require_matplotlib()
    if path is not None:
        plotting.check_plot_path(path, overwrite, how="pass overwrite=True")
    T = trace.num_layers
    title = f"Centroid trajectories: n={len(trace.points)}, k={trace.num_clusters}, {T} layer{'s' if T != 1 else ''}"
    return plotting.plot_clustering(
        trace.points, trace.final_labels, trace.centroids[-1], trajectory=trace.centroids, path=path,
        overwrite=overwrite, ax=ax, title=title, figsize=TRAJECTORY_FIGSIZE, dpi=DPI,
    )


def _label_colour_map(k: int):
    """Colours of the labels -1 (grey), 0, ..., k - 1 as a colour map and a norm for integer images."""
    from matplotlib.colors import BoundaryNorm, ListedColormap, to_rgb

    colours = np.concatenate([[to_rgb(plotting.OUTLIER_COLOUR)], plotting._cluster_colours(k)[:, :3]])
    return ListedColormap(colours), BoundaryNorm(np.arange(-1.5, k), k + 1)


def plot_assignment_changes(trace: Trace, path=None, overwrite: bool = False):
    """
    Top: per layer, the number of points whose label changed (`Trace.assignment_changes`; the first layer's bar counts
    the first assignment). Bottom: the labels as a raster, one row per point (sorted by final label, then by the
    layer after which the label no longer changes) and one column per layer, so one sees when each point settles. A
    `CHANGES_FIGSIZE` figure at `DPI`, saved as a PNG at `path` if given (an existing file only with `overwrite`).
    Returns the figure.
    """
    plotting.require_matplotlib()
    if path is not None:
        plotting.check_plot_path(path, overwrite, how="pass overwrite=True")
    figure = _new_figure(CHANGES_FIGSIZE)
    bars_ax, raster_ax = figure.subplots(2, 1, gridspec_kw={"height_ratios": [1, 2]}, sharex=True)
    T, n, k = trace.num_layers, len(trace.points), trace.num_clusters
    layers = np.arange(1, T + 1)
    changes = trace.assignment_changes
    if T:
        colours = ["#b0b0b0"] + ["#4c72b0"] * (T - 1)
        bars_ax.bar(layers, changes, color=colours, width=0.8)
        bars_ax.set_ylim(0, max(1, changes.max()) * 1.12)
        for x, value in zip(layers, changes):
            if T <= 30:
                bars_ax.annotate(str(int(value)), (x, value), xytext=(0, 2), textcoords="offset points",
                                 ha="center", fontsize=7)
        settled = int(np.nonzero(changes)[0].max()) + 1 if changes.any() else 0
        bars_ax.set_title(
            f"Label changes per layer (first bar: the first assignment); no change after layer {settled}"
            if settled < T else "Label changes per layer (first bar: the first assignment)", fontsize=10
        )
    else:
        bars_ax.set_title("No layer ran", fontsize=10)
    bars_ax.set_ylabel("points changed")

    # The last layer at which each point's label changed: 0 = unchanged since the first assignment.
    if T:
        differs = np.concatenate([np.zeros((1, n), dtype=bool), trace.labels[1:] != trace.labels[:-1]])
        last_change = T - 1 - np.argmax(differs[::-1], axis=0)  # 0-based; T - 1 - (T - 1) = 0 when it never changes
        order = np.lexsort((last_change, trace.final_labels))
        colour_map, norm = _label_colour_map(k)
        raster_ax.imshow(trace.labels[:, order].T, aspect="auto", interpolation="nearest", cmap=colour_map, norm=norm,
                         extent=(0.5, T + 0.5, n - 0.5, -0.5))
    raster_ax.set_xlabel("layer (iteration)")
    raster_ax.set_ylabel(f"points ({n}, sorted by final label)")
    raster_ax.set_title("Label of each point after each layer (colour = cluster, grey = none)", fontsize=10)
    if T:
        raster_ax.set_xticks(layers if T <= 30 else np.linspace(1, T, 10, dtype=int))
    figure.tight_layout()
    if path is not None:
        plotting.save_figure(figure, path, overwrite=overwrite)
    return figure


def plot_attention_maps(trace: Trace, layer: int = 0, path=None, overwrite: bool = False):
    """
    The four blocks' attention weights in layer `layer` (0-based; negative counts from the end) as heatmaps, rows the
    queries and columns the keys: point erase `(n × 1)`, assign `(n × k)` (weight of point i on centroid j: the one-hot
    assignment under hardmax), centroid erase `(k × 1)` and update `(k × (n + k))` (centroid j's averaging weights:
    `1/|S_j|` on its members, and on the centroid tokens, its own token if `S_j` is empty). Points are sorted by that
    layer's label, so clusters show as blocks; the colour scale is the square root of the weight. An `ATTENTION_FIGSIZE` figure at `DPI`, saved as a PNG at `path` if
    given (an existing file only with `overwrite`). Returns the figure.
    """
    plotting.require_matplotlib()
    T = trace.num_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -T <= layer < T:
        raise ValueError(f"`layer` must be an integer in [{-T}, {T - 1}] for a trace of {T} layers, got {layer!r}.")
    layer = int(layer) % T
    if path is not None:
        plotting.check_plot_path(path, overwrite, how="pass overwrite=True")
    n, k = len(trace.points), trace.num_clusters
    order = np.argsort(trace.labels[layer], kind="stable")
    weights = {name: trace.attentions[name][layer] for name in BLOCK_NAMES}
    weights["point_erase"] = weights["point_erase"][order]
    weights["assign"] = weights["assign"][order]
    weights["update"] = np.concatenate([weights["update"][:, order], weights["update"][:, n:]], axis=1)
    point_names = [f"x{i}" for i in trace.point_index[order]]
    centroid_names = [f"c{j}" for j in range(k)]

    figure = _new_figure(ATTENTION_FIGSIZE)
    grid = figure.add_gridspec(2, 3, width_ratios=[1, 10, 0.4], height_ratios=[3, 2], wspace=0.35, hspace=0.45)
    axes = {
        "point_erase": figure.add_subplot(grid[0, 0]),
        "assign": figure.add_subplot(grid[0, 1]),
        "centroid_erase": figure.add_subplot(grid[1, 0]),
        "update": figure.add_subplot(grid[1, 1]),
    }
    titles = {
        "point_erase": f"point erase ({n} × 1)\neach point on itself",
        "assign": f"assign ({n} × {k}): point i → centroid j, the assignment a(i)",
        "centroid_erase": f"centroid erase ({k} × 1)\neach centroid on itself",
        "update": f"update ({k} × ({n} + {k})): centroid j → points (1/|S_j| on members), then centroid tokens (own, if empty)",
    }
    rows = {"point_erase": point_names, "assign": point_names, "centroid_erase": centroid_names, "update": centroid_names}
    columns = {"point_erase": ["self"], "assign": centroid_names, "centroid_erase": ["self"],
               "update": point_names + centroid_names}
    from matplotlib.colors import PowerNorm

    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)  # square-root scale, so that small averaging weights 1/|S_j| show
    image = None
    for name, ax in axes.items():
        image = ax.imshow(weights[name], aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
        ax.set_title(titles[name], fontsize=9)
        for set_ticks, set_labels, names in ((ax.set_yticks, ax.set_yticklabels, rows[name]),
                                             (ax.set_xticks, ax.set_xticklabels, columns[name])):
            if len(names) <= _TICK_LIMIT:
                set_ticks(np.arange(len(names)))
                set_labels(names, fontsize=6, rotation=90 if set_ticks == ax.set_xticks and len(names) > 3 else 0)
            else:
                set_ticks([])
    axes["update"].axvline(n - 0.5, color="white", linewidth=1.5)
    axes["assign"].set_ylabel(f"points (sorted by layer {layer}'s label)")
    axes["assign"].set_xlabel("centroids")
    axes["update"].set_ylabel("centroids")
    axes["update"].set_xlabel("points (sorted as above) | centroid tokens")
    figure.colorbar(image, cax=figure.add_subplot(grid[:, 2]), label="attention weight (square-root scale)")
    figure.suptitle(f"Attention weights of layer {layer} (iteration {layer + 1} of {T}; head 0)", fontsize=11)
    if path is not None:
        plotting.save_figure(figure, path, overwrite=overwrite)
    return figure


# ---------------------------------------------------------------------------------------------------------------------
# Interactive view
# ---------------------------------------------------------------------------------------------------------------------


def export_bertviz(trace: Trace, path, overwrite: bool = False, layers=None) -> Path:
    """
    Write an HTML page at `path` (`.html`; an existing file only with `overwrite`) with bertviz's head view of the
    two cross-attention blocks, as one self-attention over the `n + k` tokens `x0, ..., c0, ...` (points named by
    their index in the input): head 0 is the assign block (point `x_i` → centroid `c_j`, the `(n × k)` weights, all
    other weights 0) and head 1 the update block (centroid `c_j` → points and centroid tokens, the `(k × (n + k))`
    weights). `layers` (0-based) picks the layers shown, all by default. The page holds `T (n + k)^2` numbers per head,
    so keep it to small problems; it loads require.js from a CDN when opened. Raises
    `plotting.MissingDependencyError` without bertviz. Returns the path.
    """
    from .tabular import check_output_path

    path = check_output_path(path, (".html",), overwrite, what="bertviz export", how="pass overwrite=True")
    try:
        from bertviz import head_view
    except ImportError as error:
        raise plotting.MissingDependencyError(_BERTVIZ_HINT) from error
    T, n, k = trace.num_layers, len(trace.points), trace.num_clusters
    if T == 0:
        raise ValueError("The trace has no layer, so there is no attention to show.")
    if layers is None:
        layers = list(range(T))
    else:
        layers = [int(t) for t in layers]
        if not layers or any(not 0 <= t < T for t in layers):
            raise ValueError(f"`layers` must be a non-empty list of layer indices in [0, {T - 1}], got {layers}.")
    tokens = [f"x{i}" for i in trace.point_index] + [f"c{j}" for j in range(k)]
    attention = []
    for t in range(T):
        weights = torch.zeros(1, 2, n + k, n + k, dtype=torch.float64)
        weights[0, 0, :n, n:] = torch.from_numpy(trace.attentions["assign"][t])
        weights[0, 1, n:, :] = torch.from_numpy(trace.attentions["update"][t])
        attention.append(weights)
    view = head_view(attention, tokens, include_layers=layers, html_action="return")
    title = f"k-means transformer attention: n={n}, k={k}, {T} layer{'s' if T != 1 else ''}"
    page = (
        f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{escape(title)}</title>\n</head>\n<body>\n"
        f"<h3>{escape(title)}</h3>\n"
        "<p>Head 0: <b>assign</b>, each point x<sub>i</sub> attends to the centroids c<sub>j</sub> (its assignment). "
        "Head 1: <b>update</b>, each centroid c<sub>j</sub> attends to the points (1/|S<sub>j</sub>| on its members) "
        "and to its own token when its cluster is empty. Layers shown: "
        f"{escape(json.dumps(layers))}.</p>\n{view.data}\n</body>\n</html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


__all__ = [
    "ATTENTION_FIGSIZE",
    "CHANGES_FIGSIZE",
    "DPI",
    "TRAJECTORY_FIGSIZE",
    "Trace",
    "export_bertviz",
    "plot_assignment_changes",
    "plot_attention_maps",
    "plot_centroid_trajectories",
    "trace",
]
