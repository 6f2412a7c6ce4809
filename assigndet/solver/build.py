"""Optimizers: parameter groups with per-parameter lr/weight decay, SGD or AdamW, gradient clipping.

``get_default_optimizer_params`` gives each trainable parameter its hyper-parameters (norm-layer
weight decay, bias lr factor and weight decay, a per-name lr multiplier, per-name overrides) and
merges parameters with equal values into few groups. ``build_optimizer`` applies the config.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_MODULE_TYPES",
    "build_optimizer",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _is_norm(module: nn.Module) -> bool:
    # library-defined norms (FrozenBatchNorm2d, LayerNorm variants) are recognised by class name
    return isinstance(module, NORM_MODULE_TYPES) or type(module).__name__.endswith(
        ("Norm", "Norm1d", "Norm2d", "Norm3d")
    )


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float | None = None,
    weight_decay: float | None = None,
    weight_decay_norm: float | None = None,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float | None = None,
    lr_factor_func: Callable[[str], float] | None = None,
    overrides: dict[str, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` optimizers.

    Args:
        base_lr, weight_decay: the defaults of every parameter (None: left to the optimizer).
        weight_decay_norm: weight decay of parameters of norm layers.
        bias_lr_factor, weight_decay_bias: lr multiplier and weight decay of parameters named
            ``bias`` (``weight_decay_bias=None`` keeps ``weight_decay``).
        lr_factor_func: maps a full parameter name (``backbone.res2.0.conv1.weight``) to an lr
            multiplier; how methods give their backbone or heads a different lr.
        overrides: short parameter name -> hyper-parameters, e.g. ``{"embedding": {"lr": 0.01,
            "weight_decay": 0.0}}`` for every parameter named ``embedding``; applied last except
            for ``lr_factor_func``.

    Only parameters with ``requires_grad`` are included, each once (shared ones too).
    """
    overrides = copy.deepcopy(overrides) if overrides else {}
    defaults: dict[str, float] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    bias_overrides: dict[str, float] = {}
    if bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError("bias_lr_factor needs base_lr")
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if bias_overrides:
        if "bias" in overrides:
            raise ValueError(
                "Give the bias hyper-parameters either through overrides or the bias_* arguments"
            )
        overrides["bias"] = bias_overrides
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("lr_factor_func needs base_lr")

    params: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            hyperparams = dict(defaults)
            if _is_norm(module) and weight_decay_norm is not None:
                hyperparams["weight_decay"] = weight_decay_norm
            hyperparams.update(overrides.get(param_name, {}))
            if lr_factor_func is not None:
                full_name = f"{module_name}.{param_name}" if module_name else param_name
                hyperparams["lr"] = hyperparams["lr"] * lr_factor_func(full_name)
            params.append({"params": [param], **hyperparams})
    return reduce_param_groups(params)


def reduce_param_groups(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge groups with identical hyper-parameters (keeps optimizer state small and readable)."""
    merged: dict[tuple, list] = defaultdict(list)
    for group in params:
        key = tuple(sorted((k, v) for k, v in group.items() if k != "params"))
        merged[key].extend(group["params"])
    return [{"params": p, **dict(key)} for key, p in merged.items()]


def _clip_fn(cfg_clip) -> Callable[[Iterable[torch.Tensor]], None]:
    clip_type = cfg_clip.CLIP_TYPE
    clip_value = cfg_clip.CLIP_VALUE
    norm_type = cfg_clip.NORM_TYPE
    if clip_type == "value":
        return lambda params: torch.nn.utils.clip_grad_value_(list(params), clip_value)
    if clip_type == "norm":

        def clip_each(params: Iterable[torch.Tensor]) -> None:
            for p in params:  # detectron2's "norm": every tensor's norm is capped on its own
                torch.nn.utils.clip_grad_norm_(p, clip_value, norm_type)

        return clip_each
    if clip_type == "full_model":
        return lambda params: torch.nn.utils.clip_grad_norm_(list(params), clip_value, norm_type)
    raise ValueError(
        f"Unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip_type!r}; expected 'value', 'norm' or "
        "'full_model'"
    )


def maybe_add_gradient_clipping(
    cfg, optimizer_type: type[torch.optim.Optimizer]
) -> type[torch.optim.Optimizer]:
    """``optimizer_type``, or (when SOLVER.CLIP_GRADIENTS.ENABLED) a subclass whose ``step()``
    clips the gradients first. Under AMP ``GradScaler.step`` unscales before calling ``step()``,
    so clipping sees true gradients."""
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        return optimizer_type
    clip = _clip_fn(cfg.SOLVER.CLIP_GRADIENTS)

    def step(self, closure=None):
        clip(p for group in self.param_groups for p in group["params"] if p.grad is not None)
        return optimizer_type.step(self, closure)

    return type(optimizer_type.__name__ + "WithGradientClip", (optimizer_type,), {"step": step})


def _build_lr_factor_func(cfg, model: nn.Module) -> Callable[[str], float] | None:
    """SOLVER.BACKBONE_MULTIPLIER for names under ``backbone.``, times the value of the first
    SOLVER.LR_MULTIPLIER_NAMES entry contained in the name; None when neither applies."""
    backbone_multiplier = cfg.SOLVER.BACKBONE_MULTIPLIER
    names, values = list(cfg.SOLVER.LR_MULTIPLIER_NAMES), list(cfg.SOLVER.LR_MULTIPLIER_VALUES)
    if len(names) != len(values):
        raise ValueError(
            f"SOLVER.LR_MULTIPLIER_NAMES ({len(names)} entries: {names}) and "
            f"SOLVER.LR_MULTIPLIER_VALUES ({len(values)} entries: {values}) must have the same "
            "length"
        )
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"SOLVER.LR_MULTIPLIER_NAMES entries must be non-empty strings, got {name!r}"
            )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(
                f"SOLVER.LR_MULTIPLIER_VALUES entries must be numbers >= 0, got {value!r}"
            )
    # Frozen parameters count as matches: freezing a part must not turn its entry into an error.
    param_names = [n for n, _ in model.named_parameters()]
    for name in names:
        if not any(name in p for p in param_names):
            raise ValueError(
                f"SOLVER.LR_MULTIPLIER_NAMES entry {name!r} is contained in no parameter name of "
                f"the model (full names such as {param_names[:3]})"
            )
    if backbone_multiplier == 1.0 and not names:
        return None

    def lr_factor_func(full_name: str) -> float:
        factor = backbone_multiplier if full_name.startswith("backbone.") else 1.0
        for name, value in zip(names, values):
            if name in full_name:
                return factor * value
        return factor

    return lr_factor_func


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (SOLVER.MOMENTUM, NESTEROV) or AdamW (SOLVER.OPTIMIZER "ADAMW") over the trainable
    parameters, with SOLVER.WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS,
    BACKBONE_MULTIPLIER for parameters under ``backbone.``, and LR_MULTIPLIER_NAMES/VALUES for
    parameters whose full name contains a given substring (the two multipliers multiply)."""
    lr_factor_func = _build_lr_factor_func(cfg, model)
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=lr_factor_func,
    )
    if not params:
        raise ValueError("The model has no trainable parameters (all have requires_grad=False)")
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
        )
    if name == "ADAMW":
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=cfg.SOLVER.BASE_LR)
    raise ValueError(
        f"Unknown SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}; expected 'SGD' or 'ADAMW'"
    )
