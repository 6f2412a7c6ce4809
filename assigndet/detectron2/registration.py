"""assigndet's components in detectron2's registries, under the names the configs use.

Each registered class is a subclass of assigndet's that converts detectron2's structures at its
``forward`` and adds no parameter or buffer, so its state dict is assigndet's: checkpoints load
either way. A name detectron2 already has keeps detectron2's component.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from detectron2.modeling import BACKBONE_REGISTRY as D2_BACKBONE_REGISTRY
from detectron2.modeling import META_ARCH_REGISTRY as D2_META_ARCH_REGISTRY
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY as D2_PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling import ROI_HEADS_REGISTRY as D2_ROI_HEADS_REGISTRY
from detectron2.modeling import Backbone as D2Backbone
from detectron2.structures import Instances as D2Instances
from torch import nn

import assigndet.projects  # noqa: F401  (methods register their components)
from assigndet.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
from assigndet.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from assigndet.modeling.roi_heads import ROI_HEADS_REGISTRY
from assigndet.structures import Instances

from .structures import (
    image_list_from_d2,
    inputs_from_d2,
    instances_from_d2,
    instances_to_d2,
    outputs_to_d2,
    shapes_to_d2,
)

__all__ = [
    "build_model",
    "check_meta_architecture",
    "declare_assigndet_trainer",
    "register_all",
    "registered_names",
]

# what this module registered, by registry name: {name: component}
_REGISTERED: dict[str, dict[str, Any]] = {}


class TrainerCheck:
    """Refuses to train a model whose config needs what only assigndet's trainer (or
    ``AssigndetTrainerMixin``) does, under a detectron2 trainer that would skip it."""

    _assigndet_trainer_needs: tuple[str, ...] = ()
    _assigndet_trainer: bool = False

    def _check_trainer(self) -> None:
        if self.training and self._assigndet_trainer_needs and not self._assigndet_trainer:
            raise RuntimeError(
                f"This config needs {', '.join(self._assigndet_trainer_needs)}, which "
                "detectron2's DefaultTrainer does not do: train with "
                "assigndet.detectron2.AssigndetTrainer, or add AssigndetTrainerMixin to your "
                "trainer (see the README, 'With detectron2')"
            )


def declare_assigndet_trainer(model: nn.Module) -> None:
    """Declare that whoever trains ``model`` does what ``trainer_needs`` lists (as
    ``AssigndetTrainerMixin`` does), so that its training forward runs."""
    for module in model.modules():
        if isinstance(module, TrainerCheck):
            module._assigndet_trainer = True


def uses_resize_crop(cfg) -> bool:
    """DETA's resize-crop-resize augmentation, which detectron2's mapper does not have."""
    return bool(cfg.INPUT.CROP.ENABLED and len(cfg.INPUT.CROP.RESIZE_BEFORE))


def trainer_needs(cfg) -> tuple[str, ...]:
    """What of ``cfg`` a plain detectron2 ``DefaultTrainer`` would not do."""
    solver, sf = cfg.SOLVER, cfg.MODEL.SAMPLING_FREE
    needs = []
    if solver.OPTIMIZER.upper() != "SGD":
        needs.append(f"SOLVER.OPTIMIZER {solver.OPTIMIZER}")
    if solver.BACKBONE_MULTIPLIER != 1.0 or len(solver.LR_MULTIPLIER_NAMES):
        needs.append("per-name learning-rate multipliers (SOLVER.BACKBONE_MULTIPLIER, "
                     "LR_MULTIPLIER_NAMES)")
    if sf.ENABLED and sf.PRIOR_INIT and sf.PRIOR_PROB < 0:
        needs.append("Sampling-Free's prior estimation before iteration 0")
    if solver.AMP.ENABLED and solver.AMP.PRECISION != "float16":
        needs.append(f"SOLVER.AMP.PRECISION {solver.AMP.PRECISION}")
    if uses_resize_crop(cfg):
        needs.append("INPUT.CROP.RESIZE_BEFORE (DETA's resize-crop augmentation)")
    return tuple(needs)


def _with_trainer_check(cls: type) -> Callable:
    """``cls.__init__`` that also records what the config (its first argument) needs of the
    trainer."""

    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        cfg = kwargs.get("cfg", args[0] if args else None)
        if cfg is not None and hasattr(cfg, "SOLVER"):
            self._assigndet_trainer_needs = trainer_needs(cfg)

    return __init__


def _adapted(cls: type, forward: Callable, what: str) -> type:
    """A subclass of ``cls`` with ``forward`` (which calls ``cls.forward``), and no new state."""
    return type(cls.__name__, (cls, TrainerCheck), {
        "__init__": _with_trainer_check(cls),
        "forward": forward,
        "__module__": __name__,
        "__doc__": f"assigndet's {cls.__name__} {what} on detectron2's structures.",
    })


def _meta_arch(cls: type) -> type:
    def forward(self, batched_inputs: list[dict[str, Any]]):
        self._check_trainer()
        outputs = cls.forward(self, inputs_from_d2(batched_inputs))
        return outputs if self.training else outputs_to_d2(outputs)

    return _adapted(cls, forward, "meta-architecture")


def _instances_list_from_d2(instances: list | None) -> list[Instances] | None:
    return None if instances is None else [
        instances_from_d2(i) if isinstance(i, D2Instances) else i for i in instances
    ]


def _instances_list_to_d2(instances: Any) -> Any:
    if isinstance(instances, list) and all(isinstance(i, Instances) for i in instances):
        return [instances_to_d2(i) for i in instances]
    return instances


def _proposal_generator(cls: type) -> type:
    def forward(self, images, features, gt_instances=None):
        self._check_trainer()
        proposals, losses = cls.forward(
            self, image_list_from_d2(images), features, _instances_list_from_d2(gt_instances)
        )
        return _instances_list_to_d2(proposals), losses

    return _adapted(cls, forward, "proposal generator")


def _roi_heads(cls: type) -> type:
    def forward(self, images, features, proposals, targets=None):
        self._check_trainer()
        results, losses = cls.forward(
            self, image_list_from_d2(images), features, _instances_list_from_d2(proposals),
            _instances_list_from_d2(targets),
        )
        return _instances_list_to_d2(results), losses

    return _adapted(cls, forward, "RoI heads")


@functools.cache
def _d2_backbone_class(cls: type) -> type:
    """``cls`` that is also a detectron2 ``Backbone`` (whose ``build_backbone`` checks it)."""

    def output_shape(self):
        return shapes_to_d2(cls.output_shape(self))

    return type(cls.__name__, (cls, D2Backbone), {
        "output_shape": output_shape, "__module__": __name__,
    })


def _backbone_builder(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    @functools.wraps(build)
    def build_for_detectron2(cfg, input_shape=None):
        backbone = build(cfg, input_shape)
        # the same object, its class extended by methods only: state dict and weights unchanged
        backbone.__class__ = _d2_backbone_class(type(backbone))
        return backbone

    return build_for_detectron2


_REGISTRIES = (
    ("META_ARCH", META_ARCH_REGISTRY, D2_META_ARCH_REGISTRY, _meta_arch),
    ("BACKBONE", BACKBONE_REGISTRY, D2_BACKBONE_REGISTRY, _backbone_builder),
    ("PROPOSAL_GENERATOR", PROPOSAL_GENERATOR_REGISTRY, D2_PROPOSAL_GENERATOR_REGISTRY,
     _proposal_generator),
    ("ROI_HEADS", ROI_HEADS_REGISTRY, D2_ROI_HEADS_REGISTRY, _roi_heads),
)


def register_all() -> None:
    """Register every assigndet component whose name detectron2's registry lacks. Calling it
    again (or reloading this package) registers nothing twice and overwrites nothing."""
    for kind, ours, theirs, adapt in _REGISTRIES:
        done = _REGISTERED.setdefault(kind, {})
        for name, component in sorted(ours._obj_map.items()):
            if name in theirs:
                continue
            adapted = adapt(component)
            theirs._do_register(name, adapted)  # fvcore's register() takes no name argument
            done[name] = adapted


def registered_names() -> dict[str, list[str]]:
    """``{registry: names}`` that assigndet added to detectron2's registries."""
    return {kind: sorted(names) for kind, names in _REGISTERED.items()}


def check_meta_architecture(cfg) -> None:
    """Raise a KeyError listing the registered names when MODEL.META_ARCHITECTURE is not one
    (detectron2's own error does not list them)."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in D2_META_ARCH_REGISTRY:
        raise KeyError(
            f"MODEL.META_ARCHITECTURE = {name!r} is registered neither by detectron2 nor by "
            f"assigndet; registered: {sorted(D2_META_ARCH_REGISTRY._obj_map)}"
        )


def build_model(cfg) -> nn.Module:
    """detectron2's ``build_model``, after ``check_meta_architecture``."""
    from detectron2.modeling import build_model as d2_build_model

    check_meta_architecture(cfg)
    return d2_build_model(cfg)
