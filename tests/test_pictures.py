"""Attention pictures: pyramid_expand upsampling, one colour scale per caption (or per word), the
header with the caption and its score, the legend; end to end with `capcli caption -v`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.transform import pyramid_expand

from capcli.config import SHAPES_TRAIN_DEFAULTS
from capcli.inference.captioning import CaptionResult, caption_files, load_captioner
from capcli.inference.heatmap import ColourScale, legend, upsample_attention
from capcli.inference.pictures import PANEL, attention_picture, word_panels

NAME = "shapes_5_1"
WHITE = np.array([255, 255, 255])


def _peaked(side: int = 14, peak: float = 20.0, at: tuple[int, int] = (4, 5)) -> np.ndarray:
    """A softmax-like attention map (side * side,) summing to 1, ``peak`` times the rest at ``at``."""
    grid = np.ones((side, side), dtype=np.float32)
    grid[at] = peak
    return (grid / grid.sum()).ravel()


def _luma(picture: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(picture, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def test_upsampling_is_pyramid_expand_and_smooth():
    weights = np.random.default_rng(0).dirichlet(np.ones(196)).astype(np.float32)
    heat = upsample_attention(weights, PANEL)
    grid = weights.reshape(14, 14)
    assert heat.shape == (PANEL, PANEL) and heat.dtype == np.float32
    assert np.allclose(heat, pyramid_expand(grid, upscale=16, sigma=16 / 3, preserve_range=True), atol=1e-7)
    assert heat.min() >= 0 and heat.mean() == pytest.approx(grid.mean(), rel=0.05)  # same units as the weights
    nearest = np.kron(grid, np.ones((16, 16), dtype=np.float32))  # each cell a 16 × 16 block
    steps = np.abs(np.diff(heat, axis=1)).max()
    assert steps < np.abs(np.diff(nearest, axis=1)).max() / 4  # no jumps at the cell borders
    # a size the grid does not divide: expanded, then resized to the size asked for
    odd = upsample_attention(weights, 100)
    assert odd.shape == (100, 100) and odd.mean() == pytest.approx(grid.mean(), rel=0.05)
    assert upsample_attention(weights, 10).shape == (10, 10)  # smaller than the grid: resized only
    with pytest.raises(ValueError, match="square"):
        upsample_attention(np.ones(10), PANEL)


def test_one_scale_for_all_words_or_each_words_own():
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    attention = np.stack([_peaked(peak=40.0), _peaked(peak=4.0)])  # a sharp word and a diffuse one
    panels, peaks, scale = word_panels(grey, attention)
    assert not scale.per_word and scale.high == pytest.approx(max(peaks))
    assert peaks[0] > 3 * peaks[1]
    sharp, diffuse = (_luma(p).max() for p in panels)
    assert sharp > diffuse + 60  # the diffuse word's peak sits low on the shared ramp
    panels, peaks_again, scale = word_panels(grey, attention, per_word=True)
    assert scale.per_word and peaks_again == peaks
    sharp, diffuse = (_luma(p).max() for p in panels)
    assert sharp == pytest.approx(diffuse, abs=1)  # each word's own max reaches the top colour
    tops = [np.asarray(p).reshape(-1, 3)[_luma(p).argmax()] for p in panels]
    assert np.abs(tops[0].astype(int) - tops[1]).max() <= 1
    # attention as the decoder leaves it under autocast: a bfloat16 tensor
    panels, bf16_peaks, _ = word_panels(grey, torch.from_numpy(attention).to(torch.bfloat16))
    assert bf16_peaks == pytest.approx(peaks, rel=0.02)


def test_legend_ticks_and_colour_bar():
    scale = ColourScale(high=0.041)
    ticks = scale.ticks()
    assert [label for _, label in ticks] == ["0.00", "0.02", "0.04"]
    assert ticks[0][0] == 0 and all(0 <= position <= 1 for position, _ in ticks)
    assert ColourScale(high=0.3).ticks()[-1][1] == "0.3"
    assert ColourScale.for_maps([np.zeros((4, 4))], 49).title == \
        "attention weight per encoder cell (7 x 7 cells), one scale for all words"
    per_word = ColourScale(high=0.041, per_word=True)
    assert [label for _, label in per_word.ticks() if label] == ["word's min", "word's max"]
    assert "own min-max" in per_word.title and "one scale" in scale.title
    picture = legend(scale, 400)
    assert picture.width >= 400  # wider only where the title needs it
    title_row = np.asarray(picture)[2:16]
    assert (title_row[:, -6:] == WHITE).all()  # the title is not cut at the right edge
    pixels = np.asarray(picture)
    bar_row = pixels[picture.height // 2, 40:360]  # across the colour bar
    assert np.all(np.diff(_luma(bar_row)) > -1)  # darkest to lightest
    assert _luma(bar_row[-1]) - _luma(bar_row[0]) > 80
    assert len({tuple(p) for p in bar_row}) > 50
    labels = pixels[-14:]  # tick labels under the bar
    assert (labels != WHITE).any(axis=2).sum() > 30


def _picture(result: CaptionResult, path: str, per_word: bool = False) -> np.ndarray:
    attention_picture(result, path, per_word)
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def captioned(trained_run):
    """One shapes image captioned by the tiny one-epoch model, attention kept."""
    data, out = trained_run
    folder = data / "shapes" / "images"
    image = str(folder / sorted(os.listdir(folder))[0])
    captioner = load_captioner(str(out / f"BEST_{NAME}.pth.tar"), "cpu", "fp32")
    [result] = caption_files(captioner, [image], 3)
    side = SHAPES_TRAIN_DEFAULTS["encoded_size"]  # TINY_TRAIN leaves the shapes set's default grid
    assert captioner.checkpoint.model_config.encoded_size == side
    assert result.error is None and result.attention.shape == (len(result.words), side * side)
    return result


def test_header_and_legend_around_the_panels(captioned, tmp_path):
    result = captioned
    pixels = _picture(result, str(tmp_path / "attention.png"))
    panels = len(result.words) + 1
    rows = -(-panels // 5)
    assert pixels.shape[1] == min(panels, 5) * (PANEL + 8) + 8
    assert pixels.shape[0] > rows * (PANEL + 34) + 80  # a header above the panels and a legend below
    header = pixels[:40]
    assert (header != WHITE).any(axis=2).sum() > 200  # the caption's text
    band = pixels[40:66]
    assert (band != WHITE).any(axis=2).sum() > 100  # the image name and the score
    legend_band = pixels[-60:]
    saturated = legend_band.max(axis=2).astype(int) - legend_band.min(axis=2) > 60
    assert saturated.sum() > 500  # the colour bar
    per_word = _picture(result, str(tmp_path / "per_word.png"), per_word=True)
    assert per_word.shape == pixels.shape and (per_word != pixels).any()


def test_score_note():
    from capcli.inference.pictures import score_note

    done = CaptionResult("x/dog.jpg", ["a", "dog"], -3.0, True)
    assert score_note(done) == "dog.jpg    log-probability -3.00, -1.00 per word (<end> included)"
    cut = CaptionResult("dog.jpg", ["a", "dog"], -3.0, False)
    assert "-1.50 per word" in score_note(cut) and "no <end>" in score_note(cut)
    assert score_note(CaptionResult("dog.jpg")) == "dog.jpg"


def test_caption_command_per_word_option(trained_run, run, tmp_path):
    data, out = trained_run
    folder = data / "shapes" / "images"
    image = folder / sorted(os.listdir(folder))[1]
    model = out / f"BEST_{NAME}.pth.tar"
    written = {}
    for option in ((), ("--per-word",)):
        pictures = tmp_path / (option[0][2:] if option else "shared")
        result = run("caption", image, "-m", model, "-v", *option, "--output-folder", pictures)
        assert result.exit_code == 0, result.output
        written[option] = np.asarray(Image.open(pictures / "attention_visualization.png").convert("RGB"))
        assert (pictures / "caption_result.png").exists()
    shared, per_word = written.values()
    assert shared.shape == per_word.shape and (shared != per_word).any()


def test_uniform_attention_is_dim_on_the_shared_scale():
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    uniform = np.full((2, 196), 1 / 196, dtype=np.float32)  # a model that looks nowhere in particular
    panels, peaks, scale = word_panels(grey, uniform)
    assert peaks == pytest.approx([1 / 196] * 2) and scale.high == pytest.approx(4 / 196)
    assert _luma(panels[0]).max() < _luma(word_panels(grey, np.stack([_peaked(peak=40.0)]))[0][0]).max() - 60
