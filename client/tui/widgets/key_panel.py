"""Where the keys come from: QKD pool and link health, mixed sources, mode."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from client.messenger.api import KeyPath, KeyStatus


def _bar(level: int | None, maximum: int | None, width: int = 12) -> str:
    if level is None or not maximum:
        return "?" * width
    filled = round(width * min(level, maximum) / maximum)
    return "█" * filled + "░" * (width - filled)


PANEL_TEXT_WIDTH = 34  # app.tcss #keys: width 38, less a round border and padding 1 each side
PATH_WIDTH = PANEL_TEXT_WIDTH - len(" path  ")  # what follows the indent of " path  ", " keys  "


def _path_lines(path: KeyPath) -> list[str]:
    """``alice@hf-5 → hf-1 → bob@hf-7`` wrapped at arrows to the panel's width."""
    steps = path.steps()
    lines = [steps[0]]
    for step in steps[1:]:
        if len(lines[-1]) + 3 + len(step) <= PATH_WIDTH:
            lines[-1] += f" → {step}"
        else:
            lines.append(f"→ {step}")
    return lines


def _source_lines(sources: str) -> list[str]:
    """``QKD+ML-KEM-768+FrodoKEM-976-AES+X25519`` wrapped after a ``+`` to the panel's width
    (a terminal would cut an algorithm's name in two)."""
    lines = [""]
    for i, name in enumerate(sources.split("+")):
        piece = name if i == 0 else "+" + name
        if lines[-1] and len(lines[-1]) + len(piece) > PATH_WIDTH:
            lines[-1] += "+"
            piece = piece[1:]
            lines.append("")
        lines[-1] += piece
    return lines


def _summary_lines(path: KeyPath) -> list[str]:
    """``3 hops; trusted: hf-1, hf-3``, the trusted nodes on lines of their own if long."""
    summary = path.summary()
    if len(summary) <= PATH_WIDTH or not path.trusted:
        return [summary]
    lines = [f"{path.hops} hops; trusted:"]
    for node in path.trusted:
        if len(lines) > 1 and len(lines[-1]) + 2 + len(node) <= PATH_WIDTH:
            lines[-1] += f", {node}"
        else:
            lines.append(node)
    return lines


def render_key_status(status: KeyStatus) -> Text:
    text = Text()
    text.append("QKD link\n", style="bold")
    pool = "unknown" if status.pool_keys is None else f"{status.pool_keys}"
    if status.pool_max:
        pool += f"/{status.pool_max}"
    text.append(f" pool  {_bar(status.pool_keys, status.pool_max)} {pool}\n")
    rate = "—" if status.key_rate is None else f"{status.key_rate:.1f} keys/s"
    text.append(f" rate  {rate}\n")
    if status.qber is None:
        text.append(" QBER  —\n")
    else:
        bad = status.qber > status.qber_threshold
        text.append(" QBER  ")
        text.append(f"{status.qber:.2%}", style="bold red" if bad else "green")
        text.append(f" (abort > {status.qber_threshold:.0%})\n")
    if status.link_alarm:
        text.append(f" ⚠ {status.link_alarm}\n", style="bold red")
    if status.kme:  # "SAE_ID @ URL": one line each, so the URL never wraps mid-word
        sae, _, url = status.kme.partition(" @ ")
        text.append(f" KME   {sae}\n", style="grey50")
        if url:
            text.append(f"       {url}\n", style="grey50")
    text.append("\nThis conversation\n", style="bold")
    text.append(" keys  ")
    if status.sources:
        style = "bold yellow" if status.degraded else "bold green"
        for i, line in enumerate(_source_lines(status.sources)):
            if i:
                text.append("\n       ")
            text.append(line, style=style)
    else:
        text.append("no session yet", style="grey50")
    text.append("\n")
    # The way the last QKD keys went, as the KMEs said: ours to the peer (else the peer's to
    # us), and the peer's too when they took another route back.
    paths = [p for p in (status.key_path, status.key_path_back) if p is not None]
    if len(paths) == 2 and paths[1].nodes == paths[0].nodes[::-1]:
        paths.pop()
    for path in paths:
        for i, line in enumerate(_path_lines(path)):
            text.append(f"{' path  ' if i == 0 else '       '}{line}\n")
        for line in _summary_lines(path):
            text.append(f"       {line}\n", style="grey70")
    if status.degraded:
        text.append(" DEGRADED: no QKD key this epoch,\n re-mixed when keys return\n",
                    style="yellow")
    text.append(f" mode  {status.mode.upper() if status.mode == 'otp' else status.mode}\n")
    if status.algorithms:
        text.append("\nAlgorithms\n", style="bold")
        for alg in status.algorithms:
            text.append(f" {alg}\n", style="grey70")
    return text


class KeyPanel(Static):
    def show(self, status: KeyStatus) -> None:
        self.status = status
        self.update(render_key_status(status))
        self.set_class(status.link_alarm is not None, "alarm")
        self.set_class(status.degraded, "degraded")
