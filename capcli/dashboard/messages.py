"""The messages between the dashboard's parts (Textual ``Message`` dataclasses).

The app's worker threads read the run folder and post what they found to the app with
``post_message`` (thread-safe): :class:`RunFound`, :class:`FeedPolled`, :class:`RunsListed`,
:class:`CheckpointsListed`. The app takes what is its own (the followed runs' figures and states)
and passes the news on to every panel (:meth:`Dashboard.broadcast
<capcli.dashboard.app.Dashboard.broadcast>`): :class:`FollowedChanged`, :class:`RunUpdated`, and
the listings themselves; a panel handles those it shows. Messages the app broadcasts do not bubble,
or they would come back to it. The caption panel's worker answers it with :class:`CaptionAnswered`
or :class:`CaptionFailed`; the panel says which checkpoint it uses with :class:`CheckpointChosen`,
which bubbles up to the app (the checkpoint list marks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.widget import Widget

from capcli.dashboard.checkpoints import CheckpointInfo
from capcli.dashboard.follow import Follower, Polled


@dataclass
class RunFound(Message, bubble=False):
    """No run was named: the newest feed in the folder is run ``name``'s (feed worker → app)."""

    name: str


@dataclass
class FeedPolled(Message, bubble=False):
    """One poll of the followed runs' feeds (feed worker → app): the reads that changed something,
    and whether a feed stopped at its read limit (the app polls again at once)."""

    reads: list[tuple[Follower, Polled]]
    more: bool


@dataclass
class RunsListed(Message, bubble=False):
    """Every run in the folder, and the state of each followed run by name (state worker → app →
    panels). The first listing may hold the followed runs' states alone."""

    runs: list
    states: dict[str, str]


@dataclass
class CheckpointsListed(Message, bubble=False):
    """The checkpoints in the run folder by path (checkpoint worker → app → panels)."""

    found: dict[str, CheckpointInfo]


@dataclass
class FollowedChanged(Message, bubble=False):
    """The app follows another run, or compares it with another one or none (app → panels)."""

    main: Follower | None
    compared: Follower | None


@dataclass
class RunUpdated(Message, bubble=False):
    """``follower`` (the followed run or the compared one) took new figures from its feed (app →
    panels)."""

    follower: Follower


@dataclass
class CheckpointChosen(Message):
    """The caption panel queries with checkpoint ``path`` now (caption panel → app → checkpoint
    list)."""

    path: str | None


@dataclass
class CaptionAnswered(Message, bubble=False):
    """Query ``number`` captioned ``settings`` = (image, checkpoint, beam) (caption worker →
    caption panel)."""

    number: int
    result: object  # capcli.inference.captioning.CaptionResult
    settings: tuple[str, str, int]


@dataclass
class CaptionFailed(Message, bubble=False):
    """Query ``number`` failed; ``text`` says why (caption worker → caption panel)."""

    number: int
    text: str


class Resized(Message):
    """``widget`` changed size and what it shows depends on it (the heat map → the caption panel)."""

    def __init__(self, widget: Widget) -> None:
        super().__init__()
        self.widget = widget
