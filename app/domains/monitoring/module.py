"""Monitoring as the application sees it: admin routes, the service, jobs, cron and the hooks."""

from __future__ import annotations

from app.core.modules import Cron, Job, Module
from app.core.services import Services
from app.domains.accounts.services import AccountService
from app.domains.monitoring.alerts import check_rules
from app.domains.monitoring.controllers import MonitoringController
from app.domains.monitoring.crons import specs_from_modules
from app.domains.monitoring.hooks import after_job, before_job, capture_request_exception, observe_request
from app.domains.monitoring.jobs import deliver_alerts, delivery_timeout_s, run_monitoring_checks
from app.domains.monitoring.services import MonitoringService
from app.domains.orders.services import OrderService
from app.domains.reports.services import ReportService


def _service(services: Services) -> MonitoringService:
    return MonitoringService(
        services.db,
        services.settings,
        services.valkey,
        crons=specs_from_modules(services.modules),
        # Each absent in an assembly without its domain (tests of monitoring alone): "n/a".
        accounts=services.get(AccountService),
        orders=services.get(OrderService),
        reports=services.get(ReportService),
    )


module = Module(
    name="monitoring",
    controllers=[MonitoringController],
    service=_service,
    jobs=[Job(function=deliver_alerts, timeout_s=delivery_timeout_s)],
    cron=[
        Cron(function=deliver_alerts, schedule="* * * * *", timeout_s=60),
        Cron(function=run_monitoring_checks, schedule="* * * * *", timeout_s=60),
    ],
    enabled=lambda settings: settings.monitoring_enabled,
    check_settings=check_rules,
    after_exception=[capture_request_exception],
    request_observers=[observe_request],
    before_job=[before_job],
    after_job=[after_job],
)
