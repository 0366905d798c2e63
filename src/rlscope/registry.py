"""One registry class for everything rlscope looks up by name (probes, probe sources, schedules, tasks), and the one
error for a name that is not there.

A registry is filled by its modules registering themselves (``@PROBES.register("entropy")``); ``load`` imports the
modules that do so the first time a name is looked up, so adding a file to the package is the only step. Registering
a name twice raises. An unknown name -- or an unknown option, recipe key or parameter, through :func:`check_names` --
raises :class:`UnknownName` with one message format everywhere::

    unknown probe 'entropi'. Did you mean 'entropy'? Known probes: behavior, cov, entropy, grad, passk, weights.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import threading
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from rlscope.errors import UsageError

T = TypeVar("T")


class UnknownName(KeyError, UsageError):
    """A name (probe, schedule, task, option, recipe key, ...) that is not known; the message names the closest
    known one. It is a ``KeyError`` (a failed lookup) and a :class:`~rlscope.errors.UsageError` (a ``ValueError``:
    a bad value the user gave): any of those ``except`` clauses catches it."""

    def __init__(self, kind: str, name: str, known: Iterable[str], where: str = "", plural: str | None = None,
                 listing: str | None = None):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(str(name), self.known, n=1)
        self.suggestion = close[0] if close else None
        hint = f" Did you mean {self.suggestion!r}?" if self.suggestion else ""
        plural = plural or kind + "s"
        if listing is None and len(self.known) > 40:
            listing = f"{len(self.known)} {plural} are known"
        where = f" {where}" if where else ""
        shown = f"{listing}." if listing else f"Known {plural}: {', '.join(self.known)}."
        self.message = f"unknown {kind} {name!r}{where}.{hint} {shown}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.message


def check_names(kind: str, given: Iterable[str], known: Iterable[str], where: str = "",
                plural: str | None = None, listing: str | None = None) -> None:
    """Raise :class:`UnknownName` for the first of ``given`` that is not in ``known``."""
    known = list(known)
    for name in given:
        if name not in known:
            raise UnknownName(kind, name, known, where, plural, listing)


def import_package_modules(package: str) -> None:
    """Import every module of ``package`` (their registrations are the side effect)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _origin(obj) -> str:
    """Where a registered object was defined, for messages (a probe's function, a class, ...)."""
    target = getattr(obj, "fn", obj)
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else type(obj).__name__


class Registry(Generic[T]):
    """Named objects of one kind.

    ``kind`` names them in messages ("probe"); ``package``: the package whose modules register into it, imported on
    the first lookup (``None``: entries are registered where the registry is defined).
    """

    def __init__(self, kind: str, package: str | None = None, plural: str | None = None):
        self.kind, self.package, self.plural = kind, package, plural
        self._items: dict[str, T] = {}
        self._loaded = package is None
        self._loading = False  # this thread is importing the package (a registration from it must not wait)
        self._lock = threading.RLock()

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """``register(name, obj)``, or ``@register(name)`` as a decorator. A name registered twice raises."""
        def store(value: T) -> T:
            self._load()  # a registration from outside the package meets the package's own entries
            if name in self._items and self._items[name] is not value:
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {_origin(self._items[name])} and "
                                 f"by {_origin(value)}")
            self._items[name] = value
            return value

        return store(obj) if obj is not None else store

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a throw-away entry clean up with this)."""
        self._items.pop(name, None)

    def _load(self) -> None:
        """Import the package's modules once. Thread-safe: another thread's lookup waits for the import to end
        instead of seeing half the entries (ranks simulated as threads look probes up at once); the importing
        thread's own registrations pass (the lock is reentrant)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                import_package_modules(self.package)
                self._loaded = True
            finally:
                self._loading = False

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise UnknownName(self.kind, name, self._items, plural=self.plural)
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)
