"""The export formats: one registry that ``results --format``, ``Client.export`` and the docs
read.

A format has a name, a one-line description, and a writer that takes the finished requests
of a batch (:class:`~batchrun.records.ResultDetail`, in input order, streamed from the store)
and the price table, writes them to a stream and returns how many it wrote. A binary format
(``binary=True``) gets a byte stream, and ``results`` writes it only to a file (``-o``), never
to standard output; the others get a UTF-8 text stream.

A format whose cells a spreadsheet may open (``csv``) neutralises formulas, and names in
``raw_write`` the writer that leaves every cell as it is (``results --csv-raw``,
``Client.export(csv_raw=True)``), for programs that read the file.

Adding a format is one :meth:`ExportFormats.register` call (or one entry in
:data:`EXPORT_FORMATS` below) and its writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from batchrun.config.prices import PriceTable
from batchrun.errors import ConfigError
from batchrun.export.anthropic import write_anthropic
from batchrun.export.flat import write_csv, write_csv_with_formulas, write_flat_jsonl
from batchrun.export.parquet import write_parquet
from batchrun.records import ResultDetail
from batchrun.registry import Registry

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
    # For a format whose text cells are neutralised against spreadsheet formulas: the writer
    # that leaves them as they are.
    raw_write: Writer | None = None

    def writer(self, *, raw: bool = False) -> Writer:
        """The writer; with ``raw``, the one that leaves formula-like cells as they are
        (ConfigError for a format that changes none)."""
        if not raw:
            return self.write
        if self.raw_write is None:
            raise ConfigError(
                f"csv_raw (--csv-raw) is for --format csv; format {self.name!r} changes no cell"
            )
        return self.raw_write


class ExportFormats(Registry[ExportFormat]):
    """The registered formats, in the order help texts list them."""

    def __init__(self, formats: Iterable[ExportFormat] = ()) -> None:
        super().__init__("export format", formats)

    def get(self, name: str) -> ExportFormat:
        """The format called ``name``; ConfigError naming the known ones if none."""
        found = self.find(name)
        if found is None:
            raise ConfigError(f"unknown export format {name!r}; formats: {', '.join(self.names())}")
        return found


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
        ExportFormat(
            "csv",
            "the flat columns as CSV, formulas neutralised (see --csv-raw)",
            write_csv,
            raw_write=write_csv_with_formulas,
        ),
        ExportFormat(
            "parquet",
            "the flat columns, typed, as Parquet (needs -o and pyarrow: batchrun[parquet])",
            write_parquet,
            binary=True,
        ),
    ]
)
