"""The health domain: liveness and readiness probes."""

from app.core.modules import Module
from app.domains.health.controllers import HealthController
from app.domains.health.services import HealthService

module = Module(
    name="health",
    controllers=[HealthController],
    service=lambda s: HealthService(
        s.db,
        s.valkey,
        s.settings.valkey_url or "",
        timeout_s=s.settings.health_timeout_s,
        shared_s=s.settings.health_ready_shared_s,
    ),
)
