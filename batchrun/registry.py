"""The shape every extension point shares: named entries, registered in one place.

:class:`Registry` holds entries by their ``name``, in the order they were registered (the
order help texts and views list them). Rate-limit dimensions (``limits.dimensions``), auth
styles (``transport.auth``) and export formats (``export.formats``) are registries; adding one
is a :meth:`Registry.register` call. Tests and plugins that add an entry for a while use
:meth:`Registry.registered`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


Entry = TypeVar("Entry", bound=Named)


class Registry(Generic[Entry]):
    """Entries by name; ``kind`` words the errors ("rate-limit dimension")."""

    def __init__(self, kind: str, entries: Iterable[Entry] = ()) -> None:
        self._kind = kind
        self._by_name: dict[str, Entry] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: Entry) -> None:
        """Add ``entry``; ValueError if its name is taken."""
        if entry.name in self._by_name:
            raise ValueError(f"{self._kind} {entry.name!r} is registered already")
        self._by_name[entry.name] = entry

    def unregister(self, name: str) -> None:
        """Remove the entry called ``name``."""
        del self._by_name[name]

    @contextmanager
    def registered(self, entry: Entry) -> Iterator[Entry]:
        """Register ``entry`` for the block."""
        self.register(entry)
        try:
            yield entry
        finally:
            self.unregister(entry.name)

    def names(self) -> tuple[str, ...]:
        """Every entry's name, in order."""
        return tuple(self._by_name)

    def find(self, name: str) -> Entry | None:
        """The entry called ``name``, or None."""
        return self._by_name.get(name)

    def get(self, name: str) -> Entry:
        """The entry called ``name``; KeyError if none."""
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Entry]:
        return iter(tuple(self._by_name.values()))
