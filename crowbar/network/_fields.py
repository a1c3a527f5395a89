"""Reading a field from either a mapping or an object: inventories and Neutron objects arrive as
both (JSON from an agent, ORM rows, client-library objects)."""

from typing import Any


def field_of(item: Any, *names: str, default: Any = None) -> Any:
    """The first of `names` that `item` has (key or attribute), else `default`."""
    for name in names:
        if isinstance(item, dict):
            if name in item:
                return item[name]
        elif hasattr(item, name):
            return getattr(item, name)
    return default
