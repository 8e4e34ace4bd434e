"""What the recipient is shown before accepting: names (as they would land), count, size."""

from __future__ import annotations

from dataclasses import dataclass

from .manifest import Manifest
from .partial import plan_destinations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def count_files(count: int) -> str:
    """``1 file``, ``3 files``."""
    return f"{count} file" if count == 1 else f"{count} files"


def format_size(size: int) -> str:
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class OfferSummary:
    """A neutral description of an offer; names are the sanitised ones (never raw)."""

    file_count: int
    total_bytes: int
    top_names: tuple[str, ...]  # what appears in the downloads folder (before "(1)" renames)
    renamed: int  # how many names had to be neutralised (traversal, device names, ...)

    @property
    def title(self) -> str:
        first = self.top_names[0] + ("/" if self.file_count > 1 and
                                     len(self.top_names) == 1 else "")
        more = f" and {len(self.top_names) - 1} more" if len(self.top_names) > 1 else ""
        files = count_files(self.file_count)
        return f"{first}{more} ({files}, {format_size(self.total_bytes)})"


def summarise(manifest: Manifest) -> OfferSummary:
    plan = plan_destinations(manifest)
    tops: list[str] = []
    for comps in plan:
        if comps[0] not in tops:
            tops.append(comps[0])
    renamed = sum(1 for entry, comps in zip(manifest.files, plan, strict=True)
                  if "/".join(comps) != entry.path)
    return OfferSummary(len(manifest.files), manifest.total_size, tuple(tops), renamed)
