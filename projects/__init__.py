"""Method projects: each registers its models and config keys when imported."""

from . import pss  # noqa: F401
