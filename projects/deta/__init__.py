"""DETA (Ouyang-Zhang et al., "NMS strikes back", 2022): two-stage deformable DETR trained with
IoU assignment, object balancing and NMS.

Importing this package registers the ``MODEL.DETA`` config keys and the ``DETA``
meta-architecture. The pieces: ``assigners`` (IoU assignment with object balancing, Hungarian
matching), ``criterion`` (focal, L1 and GIoU losses), ``position_encoding``, ``query_selection``
and ``transformer`` (the deformable encoder-decoder), ``deta`` (the model), and
``checkpoint_conversion`` (official checkpoints to this model's names).
"""

from . import config  # noqa: F401  (registers add_deta_config)
from .criterion import DETACriterion
from .deta import DETA

__all__ = ["DETA", "DETACriterion"]
