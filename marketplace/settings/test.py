"""Test settings: PostgreSQL and Redis on loopback, SeaweedFS started by the test session."""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/marketplace")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

from marketplace.env import env  # noqa: E402
from marketplace.settings import *  # noqa: E402,F403

# The settings package was imported (reading the environment) before the defaults above were set when
# DJANGO_SETTINGS_MODULE names this module: read the two again so a bare `pytest` uses PostgreSQL and Redis.
DATABASES = {"default": env.db("DATABASE_URL")}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL")
CELERY_BROKER_TRANSPORT_OPTIONS = {}
# Chosen again for the URL read above (the package chose for the one it saw, maybe the filesystem default).
CELERY_BROKER_TRANSPORT: str | None = (  # type: ignore[no-redef]
    "marketplace.integrations.broker:Transport" if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else None
)

EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}  # noqa: F405
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
VALIDATION_TIMEOUT_S = 60
# Serve static files from the source tree (live-server browser tests) without a collectstatic step.
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True
# Usage spool segments of this test session (never var/usage-spool).
USAGE_SPOOL_DIR = os.environ.get("USAGE_SPOOL_DIR") or tempfile.mkdtemp(prefix="usage-spool-")
INFERENCE_REDIS_URL = os.environ.get("INFERENCE_REDIS_URL", os.environ["CELERY_BROKER_URL"])
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", os.environ["CELERY_BROKER_URL"])
# Tests choose their billing backend themselves (the fake_stripe fixture switches to "stripe").
STRIPE_SECRET_KEY = ""
BILLING_BACKEND = "local"
