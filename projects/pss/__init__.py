"""ATSS, FCOS-PSS and ATSS-PSS: the one-stage detectors of the PSS paper and its baselines.

Importing this package registers the ``MODEL.ATSS`` / ``MODEL.PSS`` config keys and the
``ATSS``, ``FCOS_PSS`` and ``ATSS_PSS`` meta-architectures.
"""

from . import config  # noqa: F401  (registers add_pss_config)
from .atss import ATSS
from .detector import ATSS_PSS, FCOS_PSS, top_detections

__all__ = ["ATSS", "ATSS_PSS", "FCOS_PSS", "top_detections"]
