"""The text of the dashboard's panels (run, checkpoints, run list, sample captions), built from
plain data so that the app only places it. Missing figures are "—"."""

from __future__ import annotations

import time

from capcli.dashboard.checkpoints import CheckpointInfo
from capcli.dashboard.follow import Follower, Sample
from capcli.paths import checkpoint_stem
from capcli.runs.metrics import best_label, best_text
from capcli.text import visible

NONE = "—"


def literal(text: object) -> str:
    """``text`` (from a file: a run or data name, a caption, a reason) as Textual markup that shows
    it as it is, on one line: control characters as visible escapes (``capcli.text.visible``), every
    ``[`` escaped, so that no part of it is taken for a style, a variable or an action."""
    return visible(text).replace("[", "\\[")

STATE_STYLES = {"running": "[$success]running[/]", "finished": "finished", "stopped": "[$warning]stopped[/]",
                "crashed": "[b $error]CRASHED[/]"}


def age_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _fmt(value, spec: str, unit: str = "") -> str:
    return NONE if value is None else f"{value:{spec}}{unit}"


def throughput_text(step: dict, compact: bool = False) -> list[str]:
    """Two lines: images and caption pairs per second with the share of step time spent waiting
    for data, then GPU memory in use and at its peak."""
    wait = step.get("data_wait")
    return [f"{_fmt(step.get('images_per_s'), ',.0f')} img/s  {_fmt(step.get('pairs_per_s'), ',.0f')} pairs/s  "
            f"{'wait' if compact else 'data wait'} {NONE if wait is None else f'{wait:.0%}'}",
            f"GPU mem {_fmt(step.get('mem_mb'), ',.0f', ' MB')}  peak {_fmt(step.get('peak_mem_mb'), ',.0f', ' MB')}"]


def _state_text(f: Follower, age: float, stale_seconds: float) -> tuple[str, bool]:
    """The run's state as shown, and whether it is running (only then is there an ETA)."""
    s = f.summary
    if f.state is not None:  # from the run's lock and heartbeat
        text = STATE_STYLES.get(f.state, literal(f.state))
        if f.state == "stopped" and s.ended:
            text += f" ({literal(s.ended)})"
        elif f.state == "running" and age > stale_seconds:
            text += f", no line for {age_text(age)}"
        return text, f.state == "running"
    return "…", False  # not known yet: capcli.runs.summary.run_info says (never a guess from the feed alone)


def run_text(f: Follower, total: int | None, compared: str | None = None, stale_seconds: float = 120.0,
             width: int = 36, now: float | None = None) -> str:
    """The run panel: name, stage and state; epoch and step; best scores; throughput and memory;
    time per epoch, ETA (a running run only) and the age of the last line."""
    s = f.summary
    now = time.time() if now is None else now
    age = now - (s.last_time or now)
    state, running = _state_text(f, age, stale_seconds)
    epoch = (s.a2c or {}).get("epoch", 0) if s.stage == "a2c" else s.epochs_done
    lr = s.last.get("lr")
    eta = NONE
    if running and total and s.mean_epoch_seconds:
        eta = age_text(max(total - (epoch or 0), 0) * s.mean_epoch_seconds)
    per_epoch = f"{s.mean_epoch_seconds:.0f}s" if s.mean_epoch_seconds else NONE
    lines = [f"{literal(f.name)}  [b]{literal(s.stage or '?')}[/b]  {state}",
             f"epoch {epoch or 0}{f'/{total}' if total else ''}  step {s.last_step}  lr {_fmt(lr, '.2e')}",
             f"best {literal(best_label(s))} {literal(best_text(s, 'e{}', ' {} {}'))}",
             *throughput_text(f.step, compact=width < 42),
             f"{per_epoch}/epoch  ETA {eta}  updated {age_text(age)} ago"]
    if compared:
        lines[0] += f"  [dim]vs {literal(compared)}[/]"
    if s.skipped:
        lines.append(f"[$warning]skipped {s.skipped} invalid feed line(s)[/]")
    return "\n".join(lines)


def checkpoint_rows(infos: list[CheckpointInfo], chosen: str | None, width: int,
                    now: float) -> tuple[str, str]:
    """(panel title naming the columns, one row per checkpoint): ``▸`` marks the one queries use;
    a name is cut only when the panel is narrower than it; CIDEr-D and size columns appear when
    there is room for them."""
    if not infos:
        return "Checkpoints", "no checkpoints yet"
    names = [checkpoint_stem(c.path) for c in infos]
    longest = max(map(len, names))
    full = width - 2 - 30 >= min(longest, 24)
    name_width = max(width - 2 - (30 if full else 16), 8)
    rows = []
    for c, name in zip(infos, names):
        shown = name if len(name) <= name_width else name[:name_width - 1] + "…"
        cells = [f"e{c.epoch:<3}", _fmt(c.best_bleu4, ">5.3f")]
        if full:
            cells += [_fmt(c.best_cider_d, ">6.3f"), f"{c.size / 1e6:>5.0f}M"]
        cells.append(f"{age_text(now - c.mtime):>4}")
        mark = "▸ " if c.path == chosen else "  "
        rows.append(f"{mark}{literal(shown):<{min(name_width, longest)}} {' '.join(cells)}")
    return f"Checkpoints: epoch, best BLEU-4{', CIDEr-D, size' if full else ''}, age", "\n".join(rows)


def run_row(info, current: str | None, compared: str | None) -> str:
    """A run-list row: ``▸`` the followed run, ``≈`` the compared one; name, state, epochs done /
    total, best BLEU-4 and CIDEr-D."""
    mark = "▸" if info.name == current else ("≈" if info.name == compared else " ")
    total = f"/{info.epochs_total}" if info.epochs_total else ""
    return (f"{mark} {literal(info.name)}  {STATE_STYLES.get(info.state, literal(str(info.state)))}  "
            f"{info.epochs_done}{total}  {_fmt(info.best_bleu4, '.3f')} {_fmt(info.best_cider_d, '.3f')}")


RUNS_TITLE = "Runs (l): state, epochs, best BLEU-4 CIDEr-D"


def samples_text(samples: list[Sample], epoch: int | None) -> str:
    """The validation samples of the last epoch: image, generated caption, first references."""
    if not samples:
        return "no sample captions yet (each validation epoch of a newer run writes a few)"
    lines = [f"[dim]epoch {epoch}[/]"] if epoch is not None else []
    for sample in samples:
        lines.append(f"[b]{literal(sample.image)}[/b]  {literal(sample.generated)}")
        for ref in sample.references[:1]:
            lines.append(f"  [dim]ref[/] {literal(ref)}")
    return "\n".join(lines)


def caption_text(words: list[str], index: int, room: int) -> str:
    """The caption with word ``index`` marked; a long one is cut to about ``room`` characters
    around that word ("…" where it is cut), so that the heat map below keeps its rows."""
    if not words:
        return ""
    lo = hi = index
    used = len(words[index])
    grew = True
    while grew:
        grew = False
        if hi + 1 < len(words) and used + 1 + len(words[hi + 1]) <= room:
            hi, used, grew = hi + 1, used + 1 + len(words[hi + 1]), True
        if lo > 0 and used + 1 + len(words[lo - 1]) <= room:
            lo, used, grew = lo - 1, used + 1 + len(words[lo - 1]), True
    shown = [f"[reverse]{literal(w)}[/reverse]" if i == index else literal(w)
             for i, w in enumerate(words[lo:hi + 1], lo)]
    return " ".join((["…"] if lo > 0 else []) + shown + (["…"] if hi + 1 < len(words) else []))
