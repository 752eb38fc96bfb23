"""Figures and the ipywidgets slice viewer, driven from code outside papermill."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers.viz import (  # noqa: E402
    SliceViewer,
    draw_window_grid,
    plot_confusion,
    plot_histogram,
    plot_history,
    show_orthogonal,
    take_slice,
)


@pytest.fixture
def volume(rng):
    image = rng.random((20, 30, 40)).astype(np.float32)
    labels = (image * 3).astype(np.uint8)
    return image, labels


def test_slider_changes_the_displayed_slice(volume):
    image, labels = volume
    viewer = SliceViewer(image, {"labels": labels}, class_names=("a", "b", "c"))
    shown = viewer.artists[0].get_array().copy()
    assert np.array_equal(shown, image[10])
    viewer.sliders["z"].value = 3
    assert np.array_equal(viewer.artists[0].get_array(), image[3])
    assert not np.array_equal(viewer.artists[0].get_array(), shown)
    assert np.array_equal(viewer.artists[2].get_array(), labels[3])  # overlay panel follows


def test_opacity_and_axis_controls(volume):
    image, labels = volume
    viewer = SliceViewer(image, {"truth": labels, "prediction": labels}, class_names=("a", "b", "c"))
    viewer.opacity.value = 0.9
    assert viewer.artists[2].get_alpha() == pytest.approx(0.9)
    viewer.axis.value = "x"
    viewer.sliders["x"].value = 5
    assert np.array_equal(viewer.artists[0].get_array(), image[:, :, 5])
    assert "b" in viewer.widget.children[2].value  # the legend names the classes


def test_viewer_refuses_mismatched_overlay(volume):
    image, labels = volume
    with pytest.raises(ValueError, match="overlay 'bad'"):
        SliceViewer(image, {"bad": labels[:5]})


def test_figures_build(volume):
    image, labels = volume
    assert len(show_orthogonal(image, labels, class_names=("a", "b", "c")).axes) == 3
    assert plot_histogram(image, labels, ("a", "b", "c"), thresholds=[0.3]).axes
    hist = {"loss": [1, 0.5], "val_loss": [1.2, 0.7], "mean_iou": [0.2, 0.5], "val_mean_iou": [0.1, 0.4]}
    assert len(plot_history(hist).axes) == 2
    assert plot_confusion(np.array([[3, 1], [0, 4]]), ("a", "b")).axes
    from helpers.patches import sliding_windows

    fig = draw_window_grid((50, 70, 90), sliding_windows((50, 70, 90), 32, 0.5), axis=0)
    assert fig.axes[0].patches
    assert take_slice(image, "y", 4).shape == (20, 40)
