"""Pictures and plots of tools/visualize.py and tools/plot_metrics.py."""

import cv2
import numpy as np

from assigndet.utils.visualizer import loss_curves_figure, side_by_side

TITLES = ["prediction (score >= 0.5)", "ground truth"]


def _title_columns(canvas: np.ndarray) -> np.ndarray:
    """x of every column with dark (text) pixels in the title band."""
    return np.flatnonzero((canvas[:24] < 128).any(axis=(0, 2)))


def test_titles_of_small_images_do_not_overlap():
    small = [np.full((40, 30, 3), 200, np.uint8) for _ in range(2)]
    canvas = side_by_side(small, TITLES, pad=8)
    first_width = cv2.getTextSize(TITLES[0], cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0]
    columns = _title_columns(canvas)
    first, second = columns[columns < first_width + 6], columns[columns >= first_width + 6]
    assert len(first) and len(second)
    assert second.min() - first.max() >= 8  # a gap between the two titles
    assert (canvas[24:64, :30] == 200).all()  # the first image at its place


def test_large_images_keep_their_widths():
    large = [np.zeros((100, 300, 3), np.uint8), np.zeros((80, 250, 3), np.uint8)]
    canvas = side_by_side(large, TITLES, pad=8)
    assert canvas.shape == (124, 300 + 8 + 250, 3)


def test_single_logged_point_is_drawn():
    fig, keys = loss_curves_figure([{"iteration": 19, "total_loss": 2.0, "loss_cls": 1.5}])
    assert keys == ["loss_cls", "total_loss"]
    lines = fig.axes[0].lines
    assert [line.get_marker() for line in lines] == ["o", "o"]
    assert [list(line.get_xdata()) for line in lines] == [[19], [19]]
    fig, _ = loss_curves_figure(
        [{"iteration": i, "total_loss": 1.0 / i, "loss_cls": None} for i in (1, 2, 3)]
    )
    assert [line.get_marker() for line in fig.axes[0].lines] == ["None"]  # null values skipped
