"""Settings, one topic a file; every value can be set from the environment."""

from .api import *  # noqa: F403
from .base import *  # noqa: F403
from .billing import *  # noqa: F403
from .celery import *  # noqa: F403
from .database import *  # noqa: F403
from .email import *  # noqa: F403
from .hub import *  # noqa: F403
from .inference import *  # noqa: F403
from .marketplace import *  # noqa: F403
from .storage import *  # noqa: F403
