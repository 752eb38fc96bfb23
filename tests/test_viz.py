"""Figures and the ipywidgets slice viewer, driven from code outside papermill."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers.viz import (  # noqa: E402
    SliceViewer,
    draw_window_grid,
    label_cmap,
    legend_handles,
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
    assert np.array_equal(shown, image[10, ::-1, ::-1])  # anterior up, the patient's right on the left
    viewer.sliders["z"].value = 3
    assert np.array_equal(viewer.artists[0].get_array(), image[3, ::-1, ::-1])
    assert not np.array_equal(viewer.artists[0].get_array(), shown)
    assert np.array_equal(viewer.artists[2].get_array(), labels[3, ::-1, ::-1])  # overlay panel follows
    first = viewer.picture.value
    viewer.sliders["z"].value = 4
    assert viewer.picture.value[:8] == b"\x89PNG\r\n\x1a\n"  # what the browser shows: a real image
    assert viewer.picture.value != first


def test_opacity_and_axis_controls(volume):
    image, labels = volume
    viewer = SliceViewer(image, {"truth": labels, "prediction": labels}, class_names=("a", "b", "c"))
    viewer.opacity.value = 0.9
    assert viewer.artists[2].get_alpha() == pytest.approx(0.9)
    viewer.axis.value = "x"
    viewer.sliders["x"].value = 5
    assert np.array_equal(viewer.artists[0].get_array(), image[::-1, ::-1, 5])  # superior up
    legend = viewer.widget.children[2].value
    assert "<b>b</b>" in legend and "<b>c</b>" in legend  # the legend names the classes
    assert "<b>a</b>: transparent" in legend  # and says which one is not drawn


def test_figure_legends_name_every_class_and_which_one_is_not_drawn():
    """A student's read of 06: its side-by-side legend listed the coloured classes only, so the
    white of class 0 was named nowhere. Every class is listed, class 0 as transparent."""
    handles = legend_handles(["pore", "quartz", "clay"])
    assert [h.get_label() for h in handles] == ["pore: transparent", "quartz", "clay"]
    assert handles[0].get_facecolor()[3] == 0 and label_cmap(3)(0)[3] == 0  # empty, as class 0 is drawn
    assert handles[2].get_facecolor() == pytest.approx(label_cmap(3)(2))


def test_the_viewer_figure_is_not_pyplots_so_no_later_cell_shows_it_again(volume):
    import matplotlib.pyplot as plt

    image, labels = volume
    before = set(plt.get_fignums())
    viewer = SliceViewer(image, {"truth": labels}, class_names=("a", "b", "c"))
    assert set(plt.get_fignums()) == before  # Jupyter's inline backend shows pyplot's open figures
    assert bytes(viewer.picture.value).startswith(b"\x89PNG")  # the widget's own picture is drawn


def test_viewer_refuses_mismatched_overlay(volume):
    image, labels = volume
    with pytest.raises(ValueError, match="overlay 'bad'"):
        SliceViewer(image, {"bad": labels[:5]})


def test_viewer_shows_slices_with_their_true_proportions(volume):
    image, labels = volume
    viewer = SliceViewer(image, {"labels": labels}, spacing=(2.0, 0.5, 0.5))
    assert viewer.aspect() == 1.0  # axial: y against x
    viewer.axis.value = "y"
    assert viewer.aspect() == 4.0  # coronal: 2 mm slices against 0.5 mm columns
    assert viewer.axes[0].get_aspect() == 4.0


def test_error_masks_get_their_own_colour_and_legend(volume):
    from helpers.viz import MASK_COLOUR

    image, labels = volume
    error = (labels == 1).astype(np.uint8)
    viewer = SliceViewer(image, {"prediction": labels, "error": error}, ("a", "b", "c"), masks=["error"])
    overlay = viewer.artists[-1]
    assert overlay.get_cmap()(1.0)[:3] == pytest.approx(matplotlib.colors.to_rgb(MASK_COLOUR))
    assert overlay.get_cmap()(1.0) != viewer.cmap(1)  # not class 1's colour
    legend = viewer.widget.children[2].value
    assert MASK_COLOUR in legend and "<b>error</b>" in legend


def test_figures_build(volume):
    image, labels = volume
    assert len(show_orthogonal(image, labels, class_names=("a", "b", "c")).axes) == 3
    hist_fig = plot_histogram(image, labels, ("a", "b", "c"), thresholds=[0.3])
    assert len(hist_fig.axes[0].get_legend().get_texts()) >= 3  # one entry per class, plus the threshold
    hist = {"loss": [1, 0.5], "val_loss": [1.2, 0.7], "mean_iou": [0.2, 0.5], "val_mean_iou": [0.1, 0.4]}
    assert len(plot_history(hist).axes) == 2
    confusion = plot_confusion(np.array([[3, 1], [0, 4]]), ("a", "b"))
    assert np.allclose(confusion.axes[0].images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    from helpers.patches import sliding_windows

    fig = draw_window_grid((50, 70, 90), sliding_windows((50, 70, 90), 32, 0.5), axis=0)
    assert fig.axes[0].patches
    assert take_slice(image, "y", 4).shape == (20, 40)


def test_views_follow_radiological_conventions():
    """A marker at the most superior, anterior and right voxel of a RAS volume lands at the top
    left of every view (axial: anterior up, right on the left; coronal: superior up, right on
    the left; sagittal: superior up, anterior on the left), and its opposite at the bottom right."""
    import doctest

    import matplotlib.pyplot as plt

    import helpers.viz
    from helpers.viz import VIEW_DIRECTIONS, show_orthogonal

    volume = np.zeros((6, 7, 8), np.float32)
    volume[5, 6, 7] = 2.0  # z: superior, y: anterior, x: the patient's right
    volume[0, 0, 0] = 1.0  # inferior, posterior, left
    fig = show_orthogonal(volume, index=(5, 6, 7))
    viewer = SliceViewer(volume)
    for panel, axis in zip(fig.axes, "zyx", strict=True):
        shown = panel.images[0].get_array()
        assert np.unravel_index(np.argmax(shown), shown.shape) == (0, 0), axis
        assert panel.images[0].origin == "upper"
        top, bottom, left, right = VIEW_DIRECTIONS[axis]
        assert {t.get_text() for t in panel.texts} == {top, bottom, left, right}
        viewer.axis.value = axis
        viewer.sliders[axis].value = {"z": 5, "y": 6, "x": 7}[axis]
        shown = viewer.artists[0].get_array()
        assert np.unravel_index(np.argmax(shown), shown.shape) == (0, 0), axis
        assert {t.get_text() for t in viewer.axes[0].texts} == {top, bottom, left, right}
    assert VIEW_DIRECTIONS == {"z": tuple("APRL"), "y": tuple("SIRL"), "x": tuple("SIAP")}
    fig = show_orthogonal(volume, index=(0, 0, 0))
    for panel in fig.axes:
        shown = panel.images[0].get_array()
        assert shown[-1, -1] == 1.0  # inferior or posterior at the bottom, left or posterior on the right
    plt.close("all")
    assert doctest.testmod(helpers.viz).failed == 0
