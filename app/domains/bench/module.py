"""The load-test routes (``/bench/*``): in the route table only with ``BENCH_ROUTES=true``."""

from app.core.modules import Module
from app.domains.bench.controllers import bench_naive, bench_noop

module = Module(
    name="bench",
    controllers=[bench_noop, bench_naive],
    enabled=lambda settings: settings.bench_routes,
)
