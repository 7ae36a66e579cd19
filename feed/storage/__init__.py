"""Tables and queries. Every function takes an ``AsyncSession`` from its caller and never commits."""
