"""The export formats: one registry that ``results --format``, ``Client.export`` and the docs
read.

A format has a name, a one-line description, and a writer that takes the finished requests
of a batch (:class:`~batchrun.records.ResultDetail`, in input order, streamed from the store)
and the price table, writes them to a stream and returns how many it wrote. A binary format
(``binary=True``) gets a byte stream; the others a UTF-8 text stream.

Adding a format is one :meth:`ExportFormats.register` call (or one entry in
:data:`EXPORT_FORMATS` below) and its writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from batchrun.config.prices import PriceTable
from batchrun.errors import ConfigError
from batchrun.export.anthropic import write_anthropic
from batchrun.export.flat import write_csv, write_flat_jsonl
from batchrun.records import ResultDetail

Writer = Callable[[Iterable[ResultDetail], IO[Any], PriceTable], int]


@dataclass(frozen=True)
class ExportFormat:
    """One way to write results."""

    name: str
    description: str
    write: Writer
    binary: bool = False
    # Whether the writer prices rows (loading the price table is skipped otherwise).
    uses_prices: bool = True


class ExportFormats:
    """The registered formats, in the order help texts list them."""

    def __init__(self, formats: Iterable[ExportFormat] = ()) -> None:
        self._by_name: dict[str, ExportFormat] = {}
        for item in formats:
            self.register(item)

    def register(self, item: ExportFormat) -> None:
        """Add a format; ValueError if the name is taken."""
        if item.name in self._by_name:
            raise ValueError(f"export format {item.name!r} is registered already")
        self._by_name[item.name] = item

    def unregister(self, name: str) -> None:
        del self._by_name[name]

    @contextmanager
    def registered(self, item: ExportFormat) -> Iterator[ExportFormat]:
        """Register ``item`` for the block (tests, plugins)."""
        self.register(item)
        try:
            yield item
        finally:
            self.unregister(item.name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def get(self, name: str) -> ExportFormat:
        """The format called ``name``; ConfigError naming the known ones if none."""
        found = self._by_name.get(name)
        if found is None:
            raise ConfigError(
                f"unknown export format {name!r}; formats: {', '.join(self._by_name)}"
            )
        return found

    def __iter__(self) -> Iterator[ExportFormat]:
        return iter(tuple(self._by_name.values()))


EXPORT_FORMATS = ExportFormats(
    [
        ExportFormat(
            "anthropic",
            "Anthropic's batch results lines (one JSON object per request)",
            write_anthropic,
            uses_prices=False,
        ),
        ExportFormat(
            "flat",
            "one flat JSON object per request (text, tokens, cost, timings)",
            write_flat_jsonl,
        ),
        ExportFormat("csv", "the flat columns as CSV", write_csv),
    ]
)
