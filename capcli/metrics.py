"""``capcli metrics``: a run's summary and its charts, in the terminal (plotext) or as the seed's
PNG pictures (matplotlib, from the ``plots`` extra)."""

from __future__ import annotations

from capcli import safeio
from capcli.config import MONITOR_LABELS
from capcli.errors import CapcliError
from capcli.paths import chart_files
from capcli.runs import RunSummary

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
    """The summary figures as aligned text lines."""
    state = f"ended ({s.ended})" if s.ended else "running or stopped"
    rows = [
        ("run", f"{name}  ({path}, {s.lines} lines, {state})"),
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
        text = plt.build()
        charts.append(text if colour else plt.uncolorize(text))
    return charts


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
    fig.suptitle(f"Training {name}")
    fig.tight_layout()
    written.append(save(fig, together))
    return written
