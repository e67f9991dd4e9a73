"""Type checks for values that arrive as JSON through the admin route or the handle.

JSON `true` is a Python bool, and bool is an int subclass, so `isinstance(v, int)` alone
would let `true` through as 1.
"""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)
