"""Modules imported at their first use rather than by the `import` statement of a library that may
never use them: a boot pays only for what it runs.

Two uses, each measured in a fresh process on this machine:
- cog's SDK imports `requests` and `urllib.request` at its top (cog/types.py), for file inputs given as
  URLs only; they bring urllib3, http.client, ssl and email: 160 of `import cog`'s ~240 ms. coglet's
  server and its worker each import cog before any of our code runs, so `cogkit/startup/sitecustomize.py`
  does it this way at their start.
- faster-whisper imports PyAV for `decode_audio()`, which cogkit never calls (models/audio/whisper_runtime.py).
"""

import contextlib
import importlib
import sys
import types


class ImportedOnUse(types.ModuleType):
    """Stands for a module not imported yet: the first attribute asked of it imports the module."""

    def __getattr__(self, name: str):  # only called for attributes a plain module does not have
        if sys.modules.get(self.__name__) is self:  # asked while it stands in: import the real one
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


@contextlib.contextmanager
def deferred(*names: str):
    """While the block runs, `import NAME` gives a stand-in that imports NAME when first used; the
    modules imported in the block keep it. After the block, `import NAME` imports the real module.
    A module imported already is left as it is."""
    stand_ins = {}
    for name in names:
        if name in sys.modules:
            continue
        stand_ins[name] = sys.modules[name] = ImportedOnUse(name)
        parent, _, child = name.rpartition(".")
        if parent:
            # `import urllib.request` binds `urllib`; the code then reads `urllib.request`. Importing
            # the real module later replaces this attribute with it.
            setattr(importlib.import_module(parent), child, stand_ins[name])
    try:
        yield
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


def import_cog():
    """Import cog's SDK with its URL-download libraries deferred (see the module's docstring)."""
    if "cog" in sys.modules:
        return
    with deferred("requests", "urllib.request"):
        import cog  # noqa: F401
