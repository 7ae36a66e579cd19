"""Tables and queries. Every function takes an ``AsyncSession`` from its caller and never commits."""

from typing import Any

# A result row, read by attribute (``row.id``). Typed loosely: SQLAlchemy's Row generics differ between 2.0 and 2.1.
Record = Any
