"""Method projects: each registers its models and config keys when imported."""

from . import centernet2, deta, pss  # noqa: F401
