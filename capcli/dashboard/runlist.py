"""The run list (key ``l``): every run in the folder with its state; enter follows the highlighted
run, ``m`` compares it with the followed one (their validation curves overlaid), ``m`` on the
compared run stops comparing."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from capcli.dashboard.panels import run_row


class RunsScreen(ModalScreen[tuple[str, str] | None]):
    """Dismissed with ("follow", name), ("compare", name), ("uncompare", name) or None (escape)."""

    BINDINGS = [Binding("escape,l,q", "dismiss_none", "Close"), Binding("m", "compare", "Compare")]
    DEFAULT_CSS = """
    RunsScreen { align: center middle; }
    #runlist { width: 90%; max-width: 100; height: auto; max-height: 90%; border: round $accent;
               background: $panel; padding: 0 1; }
    #runlist OptionList { height: auto; max-height: 20; border: none; }
    """

    def __init__(self, runs: list, current: str | None, compared: str | None) -> None:
        super().__init__()
        self.runs, self.current, self.compared = runs, current, compared

    def compose(self) -> ComposeResult:
        with Vertical(id="runlist"):
            yield Static("[b]Runs[/b]  ↑ ↓ choose  enter follow  m compare with the followed run  escape close")
            yield OptionList(*[Option(run_row(r, self.current, self.compared), id=r.name) for r in self.runs])

    def on_mount(self) -> None:
        self.query_one("#runlist").border_title = "Runs"
        options = self.query_one(OptionList)
        names = [r.name for r in self.runs]
        options.highlighted = names.index(self.current) if self.current in names else (0 if names else None)
        options.focus()

    def _highlighted(self) -> str | None:
        options = self.query_one(OptionList)
        return None if options.highlighted is None else options.get_option_at_index(options.highlighted).id

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(("follow", event.option.id))

    def action_compare(self) -> None:
        name = self._highlighted()
        if name is not None:
            self.dismiss(("uncompare" if name == self.compared else "compare", name))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
