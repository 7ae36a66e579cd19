"""Where the non-Python parts live: beside the packages in a checkout, inside ``feed/_resources`` when installed."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def resource_path(name: str) -> Path:
    """The directory ``templates``, ``static`` or ``alembic``, in an installed wheel or a source checkout."""
    for candidate in (_HERE / "_resources" / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cipherfeed is missing its {name}/ directory; reinstall the package")
