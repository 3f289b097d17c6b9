"""``capcli metrics``: a run's summary and its charts, in the terminal (plotext) or as the seed's
PNG pictures (matplotlib, from the ``plots`` extra)."""

from __future__ import annotations

import math
from functools import partial

from capcli import safeio
from capcli.config import MONITOR_LABELS
from capcli.errors import CapcliError
from capcli.paths import chart_files
from capcli.runs.summary import RunSummary
from capcli.text import visible

CHARTS = (  # title, y label, [(series, label)]
    ("Loss", "loss", [("train_loss", "train"), ("val_loss", "val")]),
    ("Top-5 accuracy", "top-5 %", [("train_top5", "train"), ("val_top5", "val")]),
    ("Validation BLEU-4", "BLEU-4", [("bleu4", "val BLEU-4"), ("a2c_val_bleu4", "a2c val BLEU-4")]),
    ("A2C reward", "reward", [("a2c_reward", "mean reward"), ("a2c_entropy", "entropy")]),
    ("Validation CIDEr-D", "CIDEr-D", [("cider_d", "val CIDEr-D"), ("a2c_val_cider_d", "a2c val CIDEr-D")]),
)  # the seed's PNGs are the first four; the terminal and the dashboard show every one


def _fmt(value, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def best_label(s: RunSummary) -> str:
    """``BLEU-4``, or ``CIDEr-D (monitor)`` for a run that picks BEST on CIDEr-D."""
    return "BLEU-4" if s.monitor == "bleu4" else f"{MONITOR_LABELS.get(s.monitor, s.monitor)} (monitor)"


def best_text(s: RunSummary, epoch: str = "at epoch {}", other: str = " ({} {})") -> str:
    """The best epoch's monitored score, the epoch and the other score: ``0.4123 at epoch 3 (CIDEr-D 1.2345)``
    (the pieces as ``epoch`` and ``other`` place them), or ``–``."""
    if s.best_epoch is None:
        return "–"
    first, (name, value) = (s.best_bleu4, ("CIDEr-D", s.best_cider_d)) if s.monitor == "bleu4" else \
        (s.best_cider_d, ("BLEU-4", s.best_bleu4))
    extra = other.format(name, _fmt(value)) if value is not None else ""
    return f"{_fmt(first)} {epoch.format(s.best_epoch)}{extra}"


def summary_text(name: str, path: str, s: RunSummary) -> str:
    """The summary figures as aligned text lines (names and reasons from the files made visible:
    no escape sequence or newline reaches the terminal)."""
    ended = f"ended ({visible(s.ended)})" if s.ended else "no end line"
    rows = [
        ("run", f"{visible(name)}  ({visible(path)}, {s.lines} lines, {ended})"),
        ("state", s.state or "–"),
        ("epochs done", f"{s.epochs_done}" + (f" of {s.total_epochs['train']}" if "train" in s.total_epochs else "")
         + f"  (last step {s.last_step})"),
        (f"best val {best_label(s)}", best_text(s)),
        ("last train loss / top-5", f"{_fmt(s.last.get('train_loss'))} / {_fmt(s.last.get('train_top5'), '.2f')} %"),
        ("last val loss / top-5", f"{_fmt(s.last.get('val_loss'))} / {_fmt(s.last.get('val_top5'), '.2f')} %"),
        ("mean time per epoch", "–" if s.mean_epoch_seconds is None else f"{s.mean_epoch_seconds:.1f} s"),
        ("learning rate", f"{_fmt(s.last.get('lr'), '.2e')}" + (
            "; changed at " + ", ".join(f"epoch {e} → {lr:.2e}" for e, lr in s.lr_changes) if s.lr_changes
            else "; never changed")),
    ]
    if s.a2c:
        a = s.a2c
        rows.append(("A2C epoch", f"{a.get('epoch')}: reward {_fmt(a.get('reward'))}, advantage "
                                  f"{_fmt(a.get('advantage'))}, entropy {_fmt(a.get('entropy'))}"))
        rows.append(("A2C val BLEU-4 / CIDEr-D", f"{_fmt(a.get('val_bleu4'))} / {_fmt(a.get('val_cider_d'))}"))
    if s.skipped:
        rows.append(("skipped lines", f"{s.skipped} (not UTF-8, not a JSON object, or a field of the wrong type)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def terminal_charts(s: RunSummary, width: int, height: int, colour: bool) -> list[str]:
    """One plotext chart per series group that has data; plain text unless ``colour``."""
    import plotext as plt

    charts = []
    for title, ylabel, series in CHARTS:
        present = [(key, label) for key, label in series if s.series.get(key)]
        if not present:
            continue
        plt.clear_figure()
        plt.plotsize(width, height)
        plt.theme("pro" if colour else "clear")
        for key, label in present:
            xs, ys = zip(*s.series[key])
            plt.plot(list(xs), list(ys), label=label, marker="braille")
        plt.title(title)
        plt.xlabel("epoch")
        plt.ylabel(ylabel)
        set_ticks(plt, [s.series[key] for key, _ in present])
        text = plt.build()
        charts.append(text if colour else plt.uncolorize(text))
    return charts


def _decimals(x: float) -> int:
    """The decimals that write ``x`` (a tick step) exactly, at most 12."""
    return next((d for d in range(13) if abs(round(x, d) - x) <= 1e-9 * abs(x)), 12)


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> tuple[list[float], list[str]]:
    """About ``count`` ticks at round values (1, 2, 2.5 or 5 × 10^k apart) over ``lo``..``hi``, with
    labels as readable as the step allows: ``75k 150k 225k`` for steps, ``0.25 0.3`` for scores,
    ``0`` for a value that is zero within the step (never ``0.00000000000000000269``). ``integer``:
    the step is 1 at least (epochs, steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [], []
    if hi - lo <= 1e-9 * max(1.0, abs(lo), abs(hi)):  # one value (or values equal but for rounding)
        middle = (lo + hi) / 2
        half = max(abs(middle) * 0.1, 1.0 if integer else 1e-3)
        lo, hi = middle - half, middle + half
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    step = max(step, 1) if integer else step
    ticks = [round(i * step, 12) for i in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
    return ticks, [tick_label(t, step) for t in ticks]


def tick_label(value: float, step: float) -> str:
    """``value`` written with the precision of ``step``: thousands as ``k``, millions as ``M``."""
    if abs(value) < step * 1e-6:
        return "0"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale and step >= scale / 100:
            return f"{value / scale:.{_decimals(step / scale)}f}{suffix}"
    return f"{value:.{_decimals(step)}f}"


def set_ticks(plt, series: list[list[tuple[float, float]]], yside: str | None = None, x: bool = True,
              y: bool = True) -> None:
    """Readable tick labels (:func:`nice_ticks`) on a plotext chart's x axis (integers: epochs or
    steps) and its ``yside`` y axis, from the points drawn."""
    points = [p for points in series for p in points]
    if not points:
        return
    if x:
        _axis(plt.xticks, plt.xlim, [p[0] for p in points], True)
    if y:
        _axis(partial(plt.yticks, yside=yside), partial(plt.ylim, yside=yside), [p[1] for p in points], False)


def _axis(set_ticks, set_limits, values: list[float], integer: bool) -> None:
    lo, hi = min(values), max(values)
    ticks, labels = nice_ticks(lo, hi, integer=integer)
    set_ticks(ticks, labels)
    if ticks and (ticks[0] < lo or ticks[-1] > hi):  # one value: the axis spans the ticks around it
        set_limits(min(ticks[0], lo), max(ticks[-1], hi))


def save_pngs(name: str, s: RunSummary, folder: str) -> list[str]:
    """The seed's pictures: loss, accuracy, BLEU-4 and a combined training overview."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CapcliError("--save-png needs matplotlib: pip install 'capcli[plots]'") from None

    def draw(ax, keys: list[tuple[str, str]], title: str, ylabel: str) -> None:
        for key, label in keys:
            if s.series.get(key):
                xs, ys = zip(*s.series[key])
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if any(s.series.get(k) for k, _ in keys):
            ax.legend()

    def save(fig, path: str) -> str:
        try:
            with safeio.atomic_write(path) as f:  # a fresh temporary name, renamed: never through a link
                fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
        finally:
            plt.close(fig)
        return path

    written = []
    *single, together = chart_files(folder, name)
    for file, (title, ylabel, keys) in zip(single, CHARTS[:3]):
        fig, ax = plt.subplots(figsize=(8, 5))
        draw(ax, keys, title, ylabel)
        written.append(save(fig, file))
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    for ax, (title, ylabel, keys) in zip(axes.flat, CHARTS):
        draw(ax, keys, title, ylabel)
    fig.suptitle(f"Training {visible(name)}".replace("$", r"\$"))  # a "$" would start matplotlib's mathtext
    fig.tight_layout()
    written.append(save(fig, together))
    return written
