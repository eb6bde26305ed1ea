"""What a domain contributes to the application: one ``Module`` per domain, listed in ``app/modules.py``.

The application, the worker process and the CLI are all assembled from that list, so adding a domain
is one new folder and one line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from litestar.types import AfterExceptionHookHandler, ControllerRouterHandler, Scope

from app.config import Settings

if TYPE_CHECKING:
    from app.core.services import Services

QueueName = Literal["orders", "feed", "default", "github"]
QUEUE_NAMES: tuple[QueueName, ...] = get_args(QueueName)

JobFunction = Callable[..., Awaitable[Any]]
Seeder = Callable[["Services"], Awaitable[list[str]]]
RequestObserver = Callable[[Scope, int, float], None]
"""Called after every HTTP request with (scope, status, duration in seconds); must be cheap and never
block or raise: it runs on the hot path (``scope["path_template"]`` names the route, when matched)."""
JobHook = Callable[[Any], Awaitable[None]]
"""SAQ ``before_process``/``after_process`` hook: receives the job's context (``ctx["job"]``; after a
failure ``ctx["exception"]``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A SAQ job of the domain: ``function(ctx, **payload)``, on ``queue``."""

    function: JobFunction
    queue: QueueName = "default"
    batches: str | None = None
    """The outbox task this job takes in batches: the relay publishes the outbox rows of task
    ``batches`` claimed in one round as jobs ``function(ctx, events=[payload, ...])`` of up to
    ``batch_size(settings)`` rows each (every payload carries its ``outbox_id``), instead of one job
    per row. The function must be idempotent per ``outbox_id``: a re-sent round may cut its batches
    differently."""
    batch_size: Callable[[Settings], int] | None = None
    timeout_s: Callable[[Settings], int] | None = None
    """The timeout of the jobs the relay publishes for it (None: ``JOB_TIMEOUT_S``), for a job whose
    least useful run outlasts that (monitoring's delivery: one Telegram message at its worst)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Cron:
    """A scheduled job: ``function(ctx)`` on ``queue`` at ``schedule`` (crontab, seconds optional)."""

    function: JobFunction
    schedule: str
    queue: QueueName = "default"
    timeout_s: int = 60
    retries: int | None = None  # None: the settings' JOB_RETRIES
    max_runtime_s: int | None = None  # for the cron monitor; default: timeout_s


def _always(_: Settings) -> bool:
    return True


def _accept(_: Settings) -> None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Module:
    """A domain as the application sees it.

    ``service`` builds the domain's service once per process from the registry (which already holds
    the services of the modules listed before this one); Litestar injects it into handlers under the
    module's ``name``.
    """

    name: str
    controllers: Sequence[ControllerRouterHandler] = ()
    service: Callable[[Services], object] | None = None
    jobs: Sequence[Job] = ()
    cron: Sequence[Cron] = ()
    seed: Seeder | None = None
    seed_once: bool = True
    """``just serve`` runs the seed until it has run to its end once (``app.seed``): demo data a user
    deleted or renamed is not created again. False: at every start (it only makes what must exist)."""
    enabled: Callable[[Settings], bool] = field(default=_always)
    after_exception: Sequence[AfterExceptionHookHandler[Exception]] = ()
    """Litestar ``after_exception`` hooks: see every unhandled exception of a request before the
    problem answer is sent (awaited inline: keep them cheap)."""
    request_observers: Sequence[RequestObserver] = ()
    before_job: Sequence[JobHook] = ()
    after_job: Sequence[JobHook] = ()
    check_settings: Callable[[Settings], None] = _accept
    """Refuses (``SettingsError``) settings the module cannot run with, before anything starts: what
    ``load_settings`` cannot judge alone (a domain's own format, a directory it writes to). Run by
    ``app.modules.check_settings`` for the API and the worker."""
