"""The dashboard's charts: what each one draws, which four the wide layout shows, drawing one
into a ``PlotextPlot`` with a compared run's validation curves laid over it, and the
:class:`Charts` panel."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Container
from textual_plotext import PlotextPlot

from capcli.dashboard.crash import guarded
from capcli.dashboard.views import FollowsRuns
from capcli.runs.metrics import CHARTS as METRIC_CHARTS
from capcli.runs.metrics import set_ticks
from capcli.runs.summary import MAX_STEP_BUCKETS, RunSummary
from capcli.text import visible

WIDE = 120  # columns from which the wide layout shows (four charts)
MAX_POINTS = 2 * MAX_STEP_BUCKETS + 2  # a per-step series whole: its buckets' lows and highs, drawn as they are


@dataclass(frozen=True)
class ChartSpec:
    title: str
    series: tuple[tuple[str, str], ...]  # (summary series, label) on the left y axis
    xlabel: str = "epoch"
    right: tuple[tuple[str, str], ...] = ()  # on the right y axis: another scale (CIDEr-D next to BLEU-4)


# keys 1-5 as `capcli metrics` draws them, 6 the per-step loss (always there, long epochs need it)
CHARTS: dict[str, ChartSpec] = {str(i + 1): ChartSpec(title, tuple(series))
                                for i, (title, _, series) in enumerate(METRIC_CHARTS)}
CHARTS["6"] = ChartSpec("Loss per step", (("step_loss", "train, per step"),), "step")
STEP_LOSS = CHARTS["6"]
VAL_SCORES = ChartSpec("Validation BLEU-4 (left) / CIDEr-D (right)",
                       (("bleu4", "BLEU-4"), ("a2c_val_bleu4", "a2c BLEU-4")),
                       right=(("cider_d", "CIDEr-D"), ("a2c_val_cider_d", "a2c CIDEr-D")))
# a compared run adds its curves of these: validation figures (its training curves would only crowd)
COMPARED = frozenset({"val_loss", "val_top5", "bleu4", "cider_d", "a2c_val_bleu4", "a2c_val_cider_d"})


def downsample(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    picked = [points[int(i * step)] for i in range(limit - 1)]
    return picked + [points[-1]]


def narrow_chart(key: str, summary: RunSummary) -> ChartSpec:
    """The one chart of the narrow layout: the key's, with loss per step in place of the loss per
    epoch until two epochs exist."""
    if key == "1" and len(summary.series.get("train_loss", [])) < 2:
        return STEP_LOSS
    return CHARTS[key]


def wide_charts(key: str, summary: RunSummary) -> list[ChartSpec]:
    """The 2 × 2 charts at 120 columns or more: loss, validation scores, loss per step and a fourth
    that follows keys 2 and 4 (by default A2C reward once the run has it, else top-5)."""
    fourth = key if key in ("2", "4") else ("4" if summary.series.get("a2c_reward") else "2")
    return [CHARTS["1"], VAL_SCORES, STEP_LOSS, CHARTS[fourth]]


def _plot(plt, points, label: str, side: str) -> list[tuple[float, float]]:
    """Draw ``points`` (downsampled); returns those drawn."""
    points = downsample(points or [])
    if points:
        xs, ys = zip(*points)
        plt.plot(list(xs), list(ys), label=label, marker="braille", yside=side)
    return points


def draw_chart(widget, spec: ChartSpec, summary: RunSummary,
               compared: tuple[str, RunSummary] | None = None) -> int:
    """Draw ``spec`` of ``summary`` into the PlotextPlot ``widget``, with the validation curves of
    ``compared`` (run name, summary) over it, and readable tick labels (``metrics.nice_ticks``).
    Returns how many curves were drawn."""
    plt = widget.plt
    plt.clear_figure()
    plt.xlabel(spec.xlabel)
    drawn: dict[str, list] = {"left": [], "right": []}
    for side, series in (("left", spec.series), ("right", spec.right)):
        for key, label in series:
            drawn[side].append(_plot(plt, summary.series.get(key), label, side))
            if compared is not None and key in COMPARED:
                drawn[side].append(_plot(plt, compared[1].series.get(key),
                                         f"{label} · {visible(compared[0][:16])}", side))
    left, right = ([points for points in drawn[side] if points] for side in ("left", "right"))
    set_ticks(plt, left + right, y=False)
    set_ticks(plt, left, yside="left", x=False)
    set_ticks(plt, right, yside="right", x=False)
    curves = left + right
    plt.title(spec.title if curves else f"{spec.title}: no data yet")
    widget.refresh()
    return len(curves)


class Charts(FollowsRuns, Container):
    """The charts of the followed run, with the compared run's validation curves: the one that the
    last chart key chose under :data:`WIDE` columns, 2 × 2 from there. Owns the chart key."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chart_key = "1"

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="chart")
        for i in (2, 3, 4):
            yield PlotextPlot(id=f"chart{i}", classes="extra")

    @guarded
    def on_mount(self) -> None:
        self.show()

    @guarded
    def on_resize(self) -> None:
        self.show()  # the layout may have changed: one chart or four

    def show_chart(self, key: str) -> None:
        self.chart_key = key
        self.show()

    def show(self) -> None:
        summary = self.main.summary if self.main else RunSummary()
        compared = (self.compared.name, self.compared.summary) if self.compared else None
        if self.app.size.width >= WIDE:
            for widget, spec in zip(self.query(PlotextPlot), wide_charts(self.chart_key, summary)):
                draw_chart(widget, spec, summary, compared)
                widget.border_title = spec.title
        else:
            chart = self.query_one("#chart", PlotextPlot)
            spec = narrow_chart(self.chart_key, summary)
            draw_chart(chart, spec, summary, compared)
            chart.border_title = f"Chart {self.chart_key}/{len(CHARTS)}: {spec.title}"
