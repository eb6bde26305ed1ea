"""References nobody can tune, started by the harness beside the project in the same run:
``bare_litestar`` (the framework alone) and ``seed_fastapi`` (the seed's design). They import
nothing from ``app``."""
