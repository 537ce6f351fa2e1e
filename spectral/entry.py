"""Stage packages that can be called: ``sp.analyse(run, k=100)`` whatever was imported before.

``import spectral.analyse.rlc`` makes Python set ``spectral.analyse`` to the package, so a function of
that name on ``spectral`` would be replaced by a module. Instead each stage package is itself callable:
its module object forwards calls to a function named by a string (resolved at call time, so nothing
heavy is imported before it is used and no import cycle arises).
"""

from __future__ import annotations

import importlib
import sys
import types


class CallableModule(types.ModuleType):
    """A module whose call runs ``__call_target__`` (``"package.module:function"``)."""

    def __call__(self, *args, **kwargs):
        module, _, name = self.__call_target__.partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def make_callable(module_name: str, target: str) -> None:
    """Make the module ``module_name`` callable as ``target`` (``"spectral.api:analyse"``)."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__call_target__ = target
