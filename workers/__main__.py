"""The standalone worker process (``just worker``, ``python -m workers``): every queue's worker plus
the outbox relay. The same command as ``python -m app.cli worker`` (what compose runs): one start-up,
with its checks of the dependencies and the schema (``app.core.queues.run_workers``)."""

from __future__ import annotations

from app.cli import main

if __name__ == "__main__":
    main(["worker"])
