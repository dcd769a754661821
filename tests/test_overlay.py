"""Pictures for humans: one display window everywhere (the serve page, --overlay, the demo's figures) and the
demo's figures titled, with a legend of the classes."""

import numpy as np
import pytest
from PIL import Image

from vmunet.overlay import PALETTE, display_rgb, triptych, window_to_uint8, write_triptychs


def outlier_image(seed=0, shape=(24, 30)) -> np.ndarray:
    """16-bit values with a few hot pixels: the percentiles used decide how the rest looks."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1000, 3000, shape).astype(np.uint16)
    image.flat[rng.choice(image.size, 6, replace=False)] = 60000
    return image


def expected_window(array) -> np.ndarray:
    """The display rule, written out: the 0.5th..99.5th percentile of all values -> 0..255."""
    low, high = np.percentile(np.asarray(array, np.float64), [0.5, 99.5])
    return np.round(np.clip((np.asarray(array, np.float64) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_the_serve_page_the_overlays_and_the_figures_show_an_image_alike():
    serve = pytest.importorskip("vmunet.serve")
    image = outlier_image()
    window = expected_window(image)
    assert np.abs(window_to_uint8(image).astype(int) - window).max() <= 1  # float32 rounding
    shown = window_to_uint8(image)
    assert np.array_equal(serve._display_image(image), shown)  # the page
    assert np.array_equal(display_rgb(image), np.repeat(shown[..., None], 3, -1))  # --overlay
    figure = triptych(image, np.zeros(image.shape, int), np.zeros(image.shape, int))
    assert find_panel(figure, np.repeat(shown[..., None], 3, -1))  # the demo's figure
    rgb = np.stack([image, image // 2, image // 3], -1)  # colour: all channels through one window
    assert np.array_equal(display_rgb(np.concatenate([rgb, rgb[..., :1]], -1)), window_to_uint8(rgb))


def test_a_volume_is_windowed_whole_in_predict_overlays_and_the_demo(tmp_path):
    from vmunet.prediction_outputs import write_overlays

    volume = np.stack([outlier_image(0).astype(np.float32), 4 * outlier_image(1).astype(np.float32)])  # (2, H, W)
    labels = np.zeros(volume.shape, np.int64)
    labels[:, 8:14, 10:20] = 1
    whole = window_to_uint8(volume)
    assert not np.array_equal(whole[0], window_to_uint8(volume[0]))  # slice by slice would differ
    write_overlays(tmp_path, "case", volume, labels)
    (written,) = list((tmp_path / "overlays").glob("case_slice*.png"))
    z = int(written.stem[-3:])
    picture = np.asarray(Image.open(written))
    away = np.ones(labels.shape[1:], bool)
    away[6:16, 8:22] = False  # away from the contour
    assert np.array_equal(picture[away], np.repeat(whole[z][..., None], 3, -1)[away])
    (figure,) = write_triptychs(tmp_path / "demo", volume, labels, labels, [1])
    assert find_panel(np.asarray(Image.open(figure)), np.repeat(whole[1][..., None], 3, -1))


def find_panel(figure: np.ndarray, panel: np.ndarray) -> list[tuple[int, int]]:
    """Every (top, left) where ``panel`` appears in ``figure``."""
    height, width = panel.shape[:2]
    found = [(top, left) for top in range(figure.shape[0] - height + 1)
             for left in range(figure.shape[1] - width + 1)
             if np.array_equal(figure[top:top + height, left:left + width], panel)]
    return found


def tinted(grey: np.ndarray, labels: np.ndarray, alpha=0.45) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, -1).astype(np.float32)
    mask = labels > 0
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * PALETTE[labels[mask]].astype(np.float32)
    return rgb.astype(np.uint8)


def dark(pixels: np.ndarray) -> int:
    return int((pixels.max(axis=-1) < 128).sum())


def test_the_demo_figure_has_titled_panels_a_class_legend_and_the_panels_unchanged(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(40, 48)).astype(np.float32)
    truth = np.zeros((40, 48), np.int64)
    truth[5:20, 5:30], truth[22:35, 10:40] = 1, 2
    prediction = np.roll(truth, 3, axis=1)
    names = ["background", "grey matter", "white matter"]
    figure = triptych(image, truth, prediction, names)
    grey = window_to_uint8(image)
    white = np.full((40, 4, 3), 255, np.uint8)
    panels = np.concatenate([np.repeat(grey[..., None], 3, -1), white, tinted(grey, truth), white,
                             tinted(grey, prediction)], axis=1)
    ((top, left),) = find_panel(figure, panels)
    assert left == 0 and top > 0 and figure.shape[0] > top + 40  # titles above, a legend below
    titles, legend = figure[:top], figure[top + 40:]
    # one title over each panel, and three different words
    spans = [titles[:, 52 * k:52 * k + 48] for k in range(3)]
    assert all(dark(span) >= 10 for span in spans)
    assert not np.array_equal(spans[0], spans[1]) and not np.array_equal(spans[1], spans[2])
    assert np.all(titles[:, 48:52] == 255) and np.all(titles[:, 100:104] == 255)  # nothing over the gaps
    # a swatch of each class's colour with its name (dark text) to its right; no background entry
    for class_id in (1, 2):
        rows, cols = np.nonzero(np.all(legend == PALETTE[class_id], axis=-1))
        assert rows.size >= 50, class_id  # a 10 x 10 swatch less its outline
        assert dark(legend[rows.min():rows.max() + 1, cols.max() + 2:cols.max() + 40]) >= 10
    assert not np.all(legend == PALETTE[3], axis=-1).any()
    without_names = triptych(image, truth, prediction)
    assert find_panel(without_names, panels) == [(top, 0)]  # "class 1", "class 2" in the legend
    assert dark(without_names[top + 40:]) >= 20


def test_a_legend_wider_than_the_panels_wraps_onto_more_lines():
    labels = np.zeros((8, 8), np.int64)
    names = ["background"] + [f"a rather long class name {k}" for k in range(1, 5)]
    figure = triptych(np.zeros((8, 8), np.float32), labels, labels, names)
    short = triptych(np.zeros((8, 8), np.float32), labels, labels, names[:2])
    assert figure.shape[1] == short.shape[1] >= 28  # the figure keeps the panels' width ...
    assert figure.shape[0] > short.shape[0]  # ... and grows downwards
    for class_id in range(1, 5):
        assert np.all(figure == PALETTE[class_id], axis=-1).any()
