"""`weitiao demo`'s terminal output: the recipe's progress lines, its table and replies rendered with rich."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from weitiao import progress
from weitiao.data.decode import no_whole_character, terminal_safe
from weitiao.recipes.demo import EMPTY_REPLY, STAGES, TARGETS


class RichView:
    """weitiao.recipes.demo.View on a rich console (pass Console(record=True) to capture the text)."""

    def __init__(self, console: Console | None = None):
        self.console = console or progress.console()

    def step(self, text: str) -> None:
        head, _, rest = text.partition(" ")
        # Text, not markup: the curl line's JSON holds brackets; soft wrap keeps long lines copyable.
        self.console.print(Text(head, style="bold") + " " + rest, soft_wrap=True)

    def results(self, report: dict) -> None:
        self.console.print(table(report["numbers"], report["style_len"]))
        self.console.print(side_by_side(report["replies"]))

    def stream(self, prompt: str, pieces: Iterable[str]) -> None:
        self.console.print(Text("问 ", style="cyan") + prompt)
        self.console.print(Text("答 ", style="green"), end="")
        said = False
        for piece in pieces:
            self.console.print(terminal_safe(piece), end="", markup=False, highlight=False)
            said = said or bool(piece)
        self.console.print("" if said else Text(EMPTY_REPLY, style="dim"))


def table(numbers: dict, style_len: dict) -> Table:
    """base → SFT → SFT+DPO on the held-out prompts, with the targets."""
    out = Table(title="weitiao demo · held-out prompts: base → SFT → SFT+DPO")
    for col in ("metric", *STAGES, "target"):
        out.add_column(col)
    targets = {
        "mean_len": f"{style_len['p10']:.0f}–{style_len['p90']:.0f} (style data p10–p90; mean {style_len['mean']:.1f})",
        "emoji_rate": "style data ≈ 0.8",
        "stop_rate": f"≥ {TARGETS['stop_rate']}",
        "redline_refusal": f"≥ {TARGETS['redline_refusal']}",
        "over_refusal": f"≤ {TARGETS['over_refusal']}",
    }
    for key, target in targets.items():
        fmt = "{:.1f}" if key == "mean_len" else "{:.2f}"
        out.add_row(key, *(fmt.format(numbers[s][key]) for s in STAGES), target)
    return out


def side_by_side(measured: dict, n_ordinary: int = 5, n_redline: int = 3) -> Table:
    """The first and last few held-out replies of each set (the last ordinary ones are look-alikes); a newline shows
    as ⏎, so a reply of blank lines (an untrained model's) is one short cell, not a screen of empty rows."""
    out = Table(title="sample replies", show_lines=True)
    for col in ("prompt", *STAGES):
        out.add_column(col, overflow="fold")
    for name, k in (("ordinary", n_ordinary), ("redline", n_redline)):
        replies = {s: measured[s][name]["replies"] for s in STAGES}
        n = len(replies["base"])
        for i in sorted({*range(min(k - 2, n)), *range(max(0, n - 2), n)}):
            prompt = Text(terminal_safe(replies["base"][i]["prompt"]).replace("\n", "⏎"))
            out.add_row(prompt, *(_cell(replies[s][i]) for s in STAGES))
    return out


def _cell(r: dict) -> Text:
    """A reply's cell; tokens that decode to no whole character (broken UTF-8 bytes are dropped) are said, not blank."""
    if not r["reply"] and r.get("n_tokens"):
        return Text(no_whole_character(r["n_tokens"]), style="dim")
    return Text(terminal_safe(r["reply"]).replace("\n", "⏎"))
