"""Every benchmark family, by name, for ``python -m invfast bench``."""

from __future__ import annotations

from collections.abc import Callable


def families() -> dict[str, Callable]:
    from . import augment, warp

    found: dict[str, Callable] = {"warp": warp.cases, "augment": augment.cases}
    try:
        from . import inputs

        found["inputs"] = inputs.cases
    except ImportError:
        pass
    try:
        from . import losses

        found["losses"] = losses.cases
    except ImportError:
        pass
    return found
