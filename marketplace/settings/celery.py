"""Celery: Redis (or RabbitMQ) in production and tests; a filesystem broker for the embedded default."""

from celery.schedules import crontab

from marketplace.env import VAR_DIR, env
from marketplace.integrations.broker import filesystem_transport_options

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded default needs no broker server: messages are files under var/broker.
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_transport_options(VAR_DIR / "broker")
    # kombu's filesystem transport with atomic message files (see the module).
    CELERY_BROKER_TRANSPORT = "marketplace.integrations.broker:FilesystemTransport"
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # kombu's Redis transport with one client per channel (it builds one per command: see the module).
    CELERY_BROKER_TRANSPORT = "marketplace.integrations.broker:Transport"
    # Inference workers (at-most-once tasks only) may turn off the transport's unacked bookkeeping: two Redis
    # round trips a message fewer. Never on a worker that runs late-acked tasks (validation): a message a dying
    # worker held would be lost instead of restored.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"ack_emulation": env.bool("CELERY_BROKER_ACK_EMULATION", default=True)}
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# Said here, not only as Django's TIME_ZONE: a worker reads it for every message that carries an expiry, and
# Celery finds its own key ~7x faster than it falls back to Django's.
CELERY_TIMEZONE = "UTC"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Queue that validates uploaded artifacts: CPU heavy, kept apart from quick tasks.
VALIDATION_QUEUE = env.str("VALIDATION_QUEUE", default="validation")
# Each task's queue is declared here (Celery's task_routes), next to the queue names.
CELERY_TASK_ROUTES: dict[str, dict[str, str]] = {
    "catalog.version_validate": {"queue": VALIDATION_QUEUE},
    "catalog.version_hub_import": {"queue": VALIDATION_QUEUE},  # downloads to the worker's disk
}
# Tasks outside the apps' tasks.py modules (autodiscovery only finds those).
CELERY_IMPORTS = ["inference.tasks_metering"]


def _beat(task: str, schedule: float | crontab, expires: int) -> dict:
    """A beat entry on the default queue; a run not started within `expires` seconds is dropped."""
    return {"task": task, "schedule": schedule, "options": {"expires": expires, "queue": CELERY_TASK_DEFAULT_QUEUE}}


# Beat (run by `make run` beside the worker), one entry a line: task, schedule (seconds or crontab), expiry (s).
CELERY_BEAT_SCHEDULE = {
    # The usage buffer reaches the ledger within a few seconds.
    "inference-usage-flush": _beat("inference.usage_flush", 2.0, 10),
    # Billing ledger: usage → Stripe meters from the outbox, payouts left pending (a crash, Stripe down), and
    # the daily reconciliation of the usage ledger with what was reported.
    "billing-meter-reports-send": _beat("billing.meter_reports_send", 10.0, 30),
    "billing-payouts-pending-send": _beat("billing.payouts_pending_send", 300.0, 240),
    "billing-reconciliation-run": _beat("billing.reconciliation_run", crontab(hour=3, minute=17), 3600),
    "billing-invoices-local-close-due": _beat("billing.invoices_local_close_due", 3600.0, 1800),
    # Billing subscriptions: local renewals, cancels at period end, suspensions after the grace period, renewals
    # held for new license terms, stale checkouts; and webhook events a lost task left unprocessed.
    "billing-subscription-periods-renew": _beat("billing.subscription_periods_renew", 300.0, 240),
    "billing-stripe-events-retry": _beat("billing.stripe_events_retry", 300.0, 240),
}

# Inference (celery dispatch mode): requests on their own queue; warm/evict broadcast to every inference worker
# through a fanout exchange (each worker gets its own auto-deleted queue bound to it). The direct queues are
# declared as Celery would create them by default, so listing them here changes nothing for the others.
from kombu import Exchange, Queue  # noqa: E402
from kombu.common import Broadcast  # noqa: E402

from .inference import INFERENCE_QUEUE  # noqa: E402

INFERENCE_BROADCAST_QUEUE = env.str("INFERENCE_BROADCAST_QUEUE", default=f"{INFERENCE_QUEUE}.broadcast")
CELERY_TASK_QUEUES = [
    Queue(name, Exchange(name), routing_key=name)
    for name in dict.fromkeys(["default", VALIDATION_QUEUE, INFERENCE_QUEUE])
] + [Broadcast(INFERENCE_BROADCAST_QUEUE, routing_key=INFERENCE_BROADCAST_QUEUE)]
# The routing key must be explicit on both sides: the Redis transport subscribes to "<exchange>/<binding key>"
# and publishes to "<exchange>/<routing key>"; Celery would otherwise bind with "default" and publish with none.
_BROADCAST_ROUTE = {
    "queue": INFERENCE_BROADCAST_QUEUE,
    "exchange": INFERENCE_BROADCAST_QUEUE,
    "routing_key": INFERENCE_BROADCAST_QUEUE,
}
CELERY_TASK_ROUTES = {
    **CELERY_TASK_ROUTES,
    "inference.inference_run": {"queue": INFERENCE_QUEUE},
    "inference.inference_run_many": {"queue": INFERENCE_QUEUE},
    "inference.model_warm": _BROADCAST_ROUTE,
    "inference.model_evict": _BROADCAST_ROUTE,
}
# Only inference_run stores a result (the web process waits for it and deletes it after reading); a result
# nobody read (the caller gave up at its deadline) expires after this long.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=600)
