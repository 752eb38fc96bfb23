"""Figures and the interactive slice viewer.

Plotting functions return a matplotlib Figure; :class:`SliceViewer` is an
ipywidgets app with a slider per axis, an overlay opacity slider and a class
legend. Volumes are (Z, Y, X) as everywhere in :mod:`helpers`.

Slices are drawn as radiology reads them (:func:`display_slice`), for a volume on a RAS
grid (the working grid of every dataset: x to the patient's right, y anterior, z superior):
superior up in coronal and sagittal views, anterior up in axial views, the patient's right
on the image's left in axial and coronal views and anterior on the left in sagittal ones.
Each panel is labelled with those directions. imshow's default would draw a RAS array's
coronal and sagittal views upside down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from helpers.patches import Window

CLASS_COLOURS = ["#00000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4"]
#: Colour of 0/1 mask overlays such as an error map (no class uses it).
MASK_COLOUR = "#ff00ff"
AXES = ("z", "y", "x")
VIEW_NAMES = {"z": "axial (z)", "y": "coronal (y)", "x": "sagittal (x)"}
#: The patient directions at the top, bottom, left and right of each view of a RAS volume.
VIEW_DIRECTIONS = {"z": ("A", "P", "R", "L"), "y": ("S", "I", "R", "L"), "x": ("S", "I", "A", "P")}


def label_cmap(n_classes: int) -> ListedColormap:
    """Colours for label overlays; class 0 is transparent."""
    colours = (CLASS_COLOURS * (n_classes // len(CLASS_COLOURS) + 1))[:n_classes]
    return ListedColormap(colours)


def take_slice(volume: Any, axis: str | int, index: int) -> np.ndarray:
    """The 2-D slice ``index`` across ``axis`` ("z", "y", "x" or 0, 1, 2) of a (Z, Y, X) volume,
    as stored; ``volume`` may be a zarr array: only the slice is read."""
    ax = AXES.index(axis) if isinstance(axis, str) else int(axis)
    where: list[Any] = [slice(None)] * 3
    where[ax] = int(index)
    return np.asarray(volume[tuple(where)])


def channel_view(image: Any, channel: int | str = 0, channel_names: Sequence[str] = ()) -> tuple[Any, str]:
    """One channel of a (Z, Y, X[, C]) image as a (Z, Y, X) view, and its name.

    ``channel`` is an index or one of ``channel_names`` (as ``dataset.json`` names them).
    A 3-D image is its own only channel.

    Example
    -------
    >>> view, name = channel_view(np.zeros((4, 5, 6, 2)), "T1c", ("FLAIR", "T1c"))
    >>> view.shape, name
    ((4, 5, 6), 'T1c')
    """
    names = list(channel_names)
    if image.ndim == 3:
        return image, names[0] if names else "image"
    count = image.shape[3]
    if isinstance(channel, str):
        if channel not in names:
            raise ValueError(f"channel={channel!r} is not one of the channels {names}")
        channel = names.index(channel)
    if not 0 <= int(channel) < count:
        raise ValueError(f"channel={channel!r} is out of range: the image has {count} channels")
    name = names[channel] if len(names) == count else f"channel {channel}"
    return image[..., int(channel)], name


def display_slice(volume: Any, axis: str | int, index: int) -> np.ndarray:
    """Slice ``index`` across ``axis`` of a (Z, Y, X) RAS volume, as radiology displays it:
    row 0 is the top of the image and column 0 its left (draw it with imshow's default
    ``origin="upper"``; :data:`VIEW_DIRECTIONS` names the sides).

    A slice's rows run along the volume's first remaining axis (z, or y for an axial view)
    and its columns along x (or y for a sagittal view), both towards superior, anterior or
    right; reversing both puts superior or anterior at the top and the patient's right (or
    anterior, sagittally) on the left. ``volume`` may be a zarr array (:func:`take_slice`).

    Example
    -------
    >>> v = np.zeros((4, 5, 6), np.uint8); v[3, 4, 5] = 1  # the most superior, anterior, right voxel
    >>> [tuple(int(i) for i in np.argwhere(display_slice(v, a, i))[0]) for a, i in zip("zyx", (3, 4, 5))]
    [(0, 0), (0, 0), (0, 0)]
    """
    return take_slice(volume, axis, index)[::-1, ::-1]


def label_directions(ax: plt.Axes, axis: str) -> None:
    """Write the patient directions of view ``axis`` (:data:`VIEW_DIRECTIONS`) on its edges."""
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    top, bottom, left, right = VIEW_DIRECTIONS[axis]
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)


def legend_handles(class_names: Sequence[str]) -> list[Patch]:
    """Legend entries for :func:`label_cmap`'s colours, one per class: class 0, which is drawn
    transparent, as an empty box named "<name>: transparent", so that every colour, and the
    lack of one, is named.

    Example
    -------
    >>> [h.get_label() for h in legend_handles(["pore", "quartz"])]
    ['pore: transparent', 'quartz']
    """
    cmap = label_cmap(len(class_names))
    clear = Patch(facecolor="none", edgecolor="0.5", label=f"{class_names[0]}: transparent")
    return [clear] + [Patch(color=cmap(i), label=n) for i, n in enumerate(class_names) if i > 0]


def show_orthogonal(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    index: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.4,
    title: str = "",
    *,
    channel: int | str | None = None,
    channel_names: Sequence[str] = (),
    directions: bool = True,
) -> plt.Figure:
    """Axial, coronal and sagittal slices through ``index`` (default: the centre) of a (Z, Y, X[, C])
    RAS volume, drawn as radiology reads them (:func:`display_slice`), labels overlaid.

    A multi-channel image gets one row per channel, named by ``channel_names``, or only
    ``channel`` (an index or a name) when it is given. ``directions=False`` leaves out the
    patient directions, for arrays that are not on a RAS grid (a randomly flipped patch).
    """
    index = index or [s // 2 for s in image.shape[:3]]
    if image.ndim == 4 and channel is None:
        picked = [channel_view(image, c, channel_names) for c in range(image.shape[3])]
    else:
        picked = [channel_view(image, 0 if channel is None else channel, channel_names)]
    fig, grid = plt.subplots(len(picked), 3, figsize=(12, 4 * len(picked)), squeeze=False)
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    for (volume, name), axes in zip(picked, grid, strict=True):
        _orthogonal_row(
            axes, volume, labels, index, n_classes, alpha, name if image.ndim == 4 else "", directions
        )
    if labels is not None and class_names:
        fig.legend(handles=legend_handles(class_names), loc="lower center", ncol=len(class_names))
    fig.suptitle(title)
    return fig


def _orthogonal_row(
    axes: Sequence[plt.Axes],
    image: np.ndarray,
    labels: np.ndarray | None,
    index: Sequence[int],
    n_classes: int,
    alpha: float,
    name: str,
    directions: bool = True,
) -> None:
    for ax, axis, i in zip(axes, AXES, index, strict=True):
        ax.imshow(display_slice(image, axis, i), cmap="gray")
        if labels is not None:
            ax.imshow(
                display_slice(labels, axis, i),
                cmap=label_cmap(n_classes),
                alpha=alpha,
                vmin=0,
                vmax=max(n_classes - 1, 1),
                interpolation="nearest",
            )
        ax.set_title(f"{name + ': ' if name else ''}{VIEW_NAMES[axis]} = {i}")
        ax.axis("off")
        if directions:
            label_directions(ax, axis)


def plot_histogram(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    bins: int = 128,
    thresholds: Sequence[float] = (),
    *,
    channel_names: Sequence[str] = (),
) -> plt.Figure:
    """Intensity histogram, split by class when ``labels`` is given; thresholds as lines.

    A (Z, Y, X, C) image gets one panel per channel, titled with ``channel_names``.
    """
    count = image.shape[3] if image.ndim == 4 else 1
    fig, axes = plt.subplots(1, count, figsize=(7 * count, 3.5), squeeze=False)
    for c, ax in enumerate(axes[0]):
        volume, name = channel_view(image, c, channel_names)
        _histogram(ax, volume, labels, class_names, bins, thresholds)
        if count > 1:
            ax.set_title(name)
    return fig


def _histogram(
    ax: plt.Axes,
    image: np.ndarray,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    bins: int,
    thresholds: Sequence[float],
) -> None:
    lo, hi = np.percentile(image, [0.1, 99.9])
    edges = np.linspace(lo, hi, bins + 1)
    if labels is None:
        ax.hist(image.ravel(), bins=edges, color="gray")
    else:
        cmap = label_cmap(int(labels.max()) + 1)
        for c in range(int(labels.max()) + 1):
            name = class_names[c] if class_names else str(c)
            colour = "black" if c == 0 else cmap(c)
            ax.hist(image[labels == c], bins=edges, histtype="step", label=name, color=colour)
        ax.legend()
    for t in thresholds:
        ax.axvline(t, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("intensity")
    ax.set_ylabel("voxels")
    ax.set_yscale("log")


def plot_history(history: Mapping[str, Sequence[float]], metric: str = "mean_iou") -> plt.Figure:
    """Training curves: loss and ``metric``, training against validation, per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, ("loss", metric), strict=True):
        if key in history:
            ax.plot(epochs, history[key], "o-", label="training")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label="validation part")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


def draw_window_grid(
    shape: Sequence[int], windows: Sequence[Window], axis: int = 0, ax: plt.Axes | None = None
) -> plt.Figure:
    """Draw the windows' footprints on a slice across ``axis`` of a volume of ``shape``."""
    keep = [a for a in range(3) if a != axis]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    seen = set()
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for w in windows:
        rect = (w[keep[1]].start, w[keep[0]].start, w[keep[1]].stop, w[keep[0]].stop)
        if rect in seen:
            continue
        seen.add(rect)
        inset = 0.6 * (len(seen) % 4)  # so that coinciding edges stay visible
        ax.add_patch(
            Rectangle(
                (rect[0] + inset, rect[1] + inset),
                rect[2] - rect[0] - 2 * inset,
                rect[3] - rect[1] - 2 * inset,
                fill=False,
                lw=1.5,
                color=colours[len(seen) % 10],
            )
        )
    ax.add_patch(Rectangle((0, 0), shape[keep[1]], shape[keep[0]], fill=False, lw=3, color="k"))
    ax.set_xlim(-2, max(shape[keep[1]], max(w[keep[1]].stop for w in windows)) + 2)
    ax.set_ylim(max(shape[keep[0]], max(w[keep[0]].stop for w in windows)) + 2, -2)
    ax.set_aspect("equal")
    ax.set_xlabel(AXES[keep[1]])
    ax.set_ylabel(AXES[keep[0]])
    ax.set_title(f"{len(seen)} window footprints on a {AXES[axis]} slice")
    return ax.figure


def plot_seam_error(
    distance: np.ndarray, curves: Mapping[str, np.ndarray], max_distance: int | None = None
) -> plt.Figure:
    """Error rate against distance to the nearest window border, one line per method."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, err in curves.items():
        ax.plot(distance[: len(err)], err, "o-", label=name)
    ax.set_xlabel("distance to nearest window border (voxels)")
    ax.set_ylabel("voxel error rate")
    if max_distance:
        ax.set_xlim(-0.5, max_distance + 0.5)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_confusion(cm: np.ndarray, class_names: Sequence[str]) -> plt.Figure:
    """Row-normalised confusion matrix (rows: truth) with counts in the cells."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(cm)), class_names, rotation=30)
    ax.set_yticks(range(len(cm)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def savefig(fig: plt.Figure, name: str, output_dir: str | Path) -> None:
    """Save ``fig`` as ``<output_dir>/figures/<name>.png``. Returns nothing, so that a notebook
    cell ending with it shows the figure and no ``PosixPath(...)`` line."""
    folder = Path(output_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=90, bbox_inches="tight")


def _check_viewer_inputs(
    image: np.ndarray,
    overlays: Mapping[str, np.ndarray] | None,
    spacing: Sequence[float],
    masks: Sequence[str],
) -> tuple[tuple[float, ...], dict[str, np.ndarray], set[str]]:
    """:class:`SliceViewer`'s arguments checked: (spacing, overlays, masks), or ValueError naming one."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers (Z, Y, X), got {spacing!r}")
    overlays = dict(overlays or {})
    unknown = set(masks) - set(overlays)
    if unknown:
        raise ValueError(f"masks {sorted(unknown)} are not overlays")
    for name, lab in overlays.items():
        if lab.shape != image.shape[:3]:
            raise ValueError(f"overlay {name!r} has shape {lab.shape}, image {image.shape[:3]}")
    return spacing, overlays, set(masks)


def legend_html(class_names: Sequence[str], cmap: ListedColormap, masks: Sequence[str] = ()) -> str:
    """The viewer's legend as HTML: class 0 transparent, each other class and each mask in its colour."""
    swatch = '<span style="background:{};padding:0 8px">&nbsp;</span> <b>{}</b>'
    entries = [f"<b>{class_names[0]}</b>: transparent"]
    entries += [
        swatch.format(matplotlib.colors.to_hex(cmap(i)), n) for i, n in enumerate(class_names) if i > 0
    ]
    entries += [swatch.format(MASK_COLOUR, name) for name in masks]
    return " &nbsp; ".join(entries)


def _draw_panels(
    axes: Sequence[plt.Axes],
    slices: Sequence[np.ndarray],
    titles: Sequence[str],
    masks: set[str],
    cmap: ListedColormap,
    window: tuple[float, float],
    *,
    aspect: float,
    alpha: float,
    n_classes: int,
) -> list[Any]:
    """Draw the image slice in every panel and panel k's overlay on top; the artists, in order."""
    artists = []
    for k, ax in enumerate(axes):
        ax.clear()
        ax.axis("off")
        ax.set_title(titles[k])
        artists.append(ax.imshow(slices[0], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect))
        if k:
            is_mask = titles[k] in masks
            artists.append(
                ax.imshow(
                    slices[k],
                    cmap=ListedColormap(["#00000000", MASK_COLOUR]) if is_mask else cmap,
                    vmin=0,
                    vmax=1 if is_mask else n_classes - 1,
                    alpha=alpha,
                    interpolation="nearest",
                    aspect=aspect,
                )
            )
    return artists


class SliceViewer:
    """Interactive viewer: grey image plus label panels, a slider per axis, opacity, legend.

    Slices are drawn as radiology reads them, with the patient directions on each panel
    (:func:`display_slice`).

    Parameters
    ----------
    image : (Z, Y, X) array
    overlays : mapping of panel title -> (Z, Y, X) label array
        Each gets a panel with the image underneath (e.g. truth, prediction, error).
    class_names : sequence of str
        Class 0 is drawn transparent, and the legend says so.
    axis : "z", "y" or "x"
        The slicing axis shown first; the ``axis`` dropdown changes it.
    spacing : 3 floats
        Voxel size (Z, Y, X) in mm, so a slice is shown with its true proportions
        (a 20-slice CT at 2 mm is not squashed into a strip).
    masks : sequence of str
        Overlays that are 0/1 masks rather than class maps (e.g. "error"): drawn in
        :data:`MASK_COLOUR` and named in the legend by their own title.
    channel_names : sequence of str
        The channels of a (Z, Y, X, C) image; a ``channel`` dropdown picks the one shown.

    Use ``viewer.widget`` in a notebook. ``viewer.sliders[axis].value = i`` moves
    it from code; ``viewer.artists`` are the displayed images and ``viewer.picture``
    the PNG the browser shows.
    """

    def __init__(
        self,
        image: np.ndarray,
        overlays: Mapping[str, np.ndarray] | None = None,
        class_names: Sequence[str] | None = None,
        axis: str = "z",
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        masks: Sequence[str] = (),
        channel_names: Sequence[str] = (),
    ) -> None:
        import ipywidgets as w

        self.image = image
        self.spacing, self.overlays, self.masks = _check_viewer_inputs(image, overlays, spacing, masks)
        count = image.shape[3] if image.ndim == 4 else 1
        names = [channel_view(image, c, channel_names)[1] for c in range(count)]
        self.channel = w.Dropdown(
            options=[(n, c) for c, n in enumerate(names)], value=0, description="channel"
        )
        n = max([int(v.max()) + 1 for v in self.overlays.values()] + [len(class_names or ())] + [2])
        self.class_names = list(class_names or [str(c) for c in range(n)])
        self.cmap = label_cmap(n)
        self.n_classes = n
        self.axis = w.Dropdown(options=list(AXES), value=axis, description="axis")
        self.sliders = {
            a: w.IntSlider(value=s // 2, min=0, max=s - 1, description=a, continuous_update=False)
            for a, s in zip(AXES, image.shape[:3], strict=True)
        }
        self.opacity = w.FloatSlider(value=0.45, min=0, max=1, step=0.05, description="opacity")
        self.picture = w.Image(format="png")
        panels = 1 + len(self.overlays)
        # A figure of its own, not pyplot's: the widget shows it as a picture, and pyplot would also
        # show it under the next cell that draws a figure (a student's read of 06 found it there).
        self.fig = Figure(figsize=(4 * panels, 4.2))
        axes = self.fig.subplots(1, panels, squeeze=False)
        self.axes = list(axes[0])
        self.artists: list[Any] = []
        self._draw_static()
        for control in (self.axis, self.channel, self.opacity, *self.sliders.values()):
            control.observe(self._on_change, names="value")
        masks_shown = [name for name in self.overlays if name in self.masks]
        legend = w.HTML(legend_html(self.class_names, self.cmap, masks_shown))
        controls = [self.axis, self.channel, self.opacity] if count > 1 else [self.axis, self.opacity]
        self.widget = w.VBox([w.HBox(controls), w.HBox(list(self.sliders.values())), legend, self.picture])
        self._render()

    def _slices(self) -> list[np.ndarray]:
        a = self.axis.value
        i = self.sliders[a].value
        image = channel_view(self.image, self.channel.value)[0]
        return [display_slice(image, a, i)] + [display_slice(v, a, i) for v in self.overlays.values()]

    def _draw_static(self) -> None:
        vmin, vmax = np.percentile(channel_view(self.image, self.channel.value)[0], [1, 99])
        style = {"aspect": self.aspect(), "alpha": self.opacity.value, "n_classes": self.n_classes}
        self.artists = _draw_panels(self.axes, self._slices(), ["image", *self.overlays], self.masks,
                                    self.cmap, (vmin, vmax), **style)  # fmt: skip
        for ax in self.axes:
            label_directions(ax, self.axis.value)

    def aspect(self) -> float:
        """Height / width of one displayed pixel for the current axis, from the voxel spacing."""
        rows, cols = [i for i in range(3) if i != AXES.index(self.axis.value)]
        return self.spacing[rows] / self.spacing[cols]

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if change.get("owner") in (self.axis, self.channel):
            self._draw_static()
        self.update()
        self._render()

    def update(self) -> None:
        """Refresh the displayed slices and opacity from the controls."""
        slices = self._slices()
        it = iter(self.artists)
        for k, _ in enumerate(self.axes):
            next(it).set_data(slices[0])
            if k:
                overlay = next(it)
                overlay.set_data(slices[k])
                overlay.set_alpha(self.opacity.value)
        a = self.axis.value
        self.fig.suptitle(f"{VIEW_NAMES[a]} = {self.sliders[a].value}")

    def _render(self) -> None:
        """Draw the figure into the image widget as PNG bytes.

        An explicit PNG, not ``display(fig)``: with the Agg backend (scripts, papermill,
        CI) IPython has no image formatter for figures and would show the text
        ``<Figure size ...>`` instead of the slice.
        """
        import io

        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=80)
        self.picture.value = buffer.getvalue()
