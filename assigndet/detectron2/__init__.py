"""assigndet as a detectron2 project: its detectors built and trained by detectron2's machinery.

Importing this package registers assigndet's meta-architectures, backbones, proposal generators
and RoI heads into detectron2's registries (names detectron2 already has keep detectron2's
component). Then::

    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer
    from assigndet.detectron2 import AssigndetTrainerMixin, add_assigndet_config

    cfg = get_cfg(); add_assigndet_config(cfg); cfg.merge_from_file("configs/fcos_pss_r50_3x.yaml")

    class Trainer(AssigndetTrainerMixin, DefaultTrainer): ...

Needs detectron2 (see the README, "With detectron2").
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:
    raise ImportError(
        "assigndet.detectron2 needs detectron2, which is not installed (it has no package on the "
        "Python index). Install it from source into this environment, against its torch: "
        "pip install --no-build-isolation "
        "'git+https://github.com/facebookresearch/detectron2.git@02b5c4e295e990042a714712c21dc79b731e8833'"
    ) from e

from .config import add_assigndet_config
from .datasets import register_in_detectron2
from .registration import build_model, declare_assigndet_trainer, register_all, registered_names
from .trainer import AssigndetTrainer, AssigndetTrainerMixin

register_all()

__all__ = [
    "AssigndetTrainer",
    "AssigndetTrainerMixin",
    "add_assigndet_config",
    "build_model",
    "declare_assigndet_trainer",
    "register_all",
    "register_in_detectron2",
    "registered_names",
]
