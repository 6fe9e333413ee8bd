"""The task adapters' former place, kept until the deployment code imports :mod:`mimiq_mm.tasks`."""
from ..tasks import *  # noqa: F401,F403
from ..tasks import __all__  # noqa: F401
