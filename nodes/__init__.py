"""The effects, one module per family (transform, color, face, reenact, faceswap, background,
composite, ...). Importing this package registers every built-in node by importing each module in
it; modules load no models and need no GPU at import (nodes load what they need in ``open()``).
"""

import importlib
import pkgutil

FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
for _name in FAMILIES:
    importlib.import_module(f"{__name__}.{_name}")
