"""Training and inference entry points: trainers, hooks, set-up helpers and ``launch``."""

from . import hooks
from .defaults import (
    DefaultPredictor,
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
)
from .hooks import HookBase
from .launch import launch
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase

__all__ = [
    "AMPTrainer",
    "DefaultPredictor",
    "DefaultTrainer",
    "HookBase",
    "SimpleTrainer",
    "TrainerBase",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "hooks",
    "launch",
]
