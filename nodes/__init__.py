"""The effects. Importing this package registers every built-in node; it loads no models and needs
no GPU (nodes load what they need in ``open()``).

Families (one module each): transform (mirror, crop, resize), color (color_adjust).
"""

from . import color, transform  # noqa: F401  (registration side effect)

FAMILIES = ("transform", "color")
