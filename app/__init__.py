"""A SQL-first Litestar modular monolith."""
