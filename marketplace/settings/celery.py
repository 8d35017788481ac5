"""Celery: Redis (or RabbitMQ) in production and tests; a filesystem broker for the embedded default."""

from marketplace.env import VAR_DIR, env

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded default needs no broker server: messages are files under var/broker.
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("out", "processed"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "data_folder_processed": str(_broker_dir / "processed"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
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
}
