"""Run a function right after modules have been imported (a post-import hook), standard library only.

`import hovle` uses it to register HoVLE releases with transformers' Auto classes when transformers' auto modules
are imported, so that importing the package, `hovle --help` and the converter's pure-Python parts stay free of torch
and transformers.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable


def is_being_imported(name: str) -> bool:
    """Whether module `name` is executing right now (in `sys.modules` but not finished)."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def after_imports(watched: Callable[[str], bool], callback: Callable[[str], bool]) -> None:
    """Call `callback(name)` right after each module whose name `watched` accepts has executed (inside the import
    statement that loads it; an import that fails does not call it), until the callback returns True."""
    finder = _AfterImportFinder(watched, callback)
    sys.meta_path.insert(0, finder)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds watched modules with the regular path finder and wraps their loader; removes itself when done."""

    def __init__(self, watched: Callable[[str], bool], callback: Callable[[str], bool]) -> None:
        self.watched, self.callback = watched, callback

    def find_spec(self, fullname, path=None, target=None):
        if not self.watched(fullname):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenCall(spec.loader, lambda: self._imported(fullname))
        return spec

    def _imported(self, name: str) -> None:
        if self in sys.meta_path and self.callback(name):
            sys.meta_path.remove(self)


class _ThenCall(importlib.abc.Loader):
    """A loader that runs the wrapped loader, then the callback; everything else is the wrapped loader's."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[], None]) -> None:
        self._loader, self._callback = loader, callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name: str):  # get_source, get_filename, ...: `inspect` and tracebacks keep working
        return getattr(self._loader, name)
