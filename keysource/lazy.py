"""Package attributes imported on first use (PEP 562), for packages the ``qsecret`` command
touches on every start but whose contents only some commands need."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``name`` from its submodule ``home[name]``."""

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
