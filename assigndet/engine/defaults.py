"""detectron2-style entry points: argument parser, run set-up, DefaultTrainer, DefaultPredictor.

A training script is::

    args = default_argument_parser().parse_args()
    cfg = get_cfg(); cfg.merge_from_file(args.config_file); cfg.merge_from_list(args.opts)
    cfg.freeze(); default_setup(cfg, args)
    trainer = DefaultTrainer(cfg); trainer.resume_or_load(resume=args.resume); trainer.train()
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from assigndet.utils import comm
from assigndet.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from assigndet.utils.logger import setup_logger

from . import hooks
from .launch import default_dist_url
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase

__all__ = [
    "DefaultPredictor",
    "DefaultTrainer",
    "IncompleteWeightsError",
    "amp_dtype",
    "check_weights_file",
    "collect_env_info",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "load_inference_weights",
    "seed_all_rng",
]

logger = logging.getLogger(__name__)


class _DetectionArgumentParser(argparse.ArgumentParser):
    """Refuses a flag placed among the trailing ``KEY VALUE`` overrides, which would otherwise
    be taken for a config key."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        misplaced = [
            item for item in getattr(namespace, "opts", None) or []
            if item.split("=", 1)[0] in self._option_string_actions
        ]
        if misplaced:
            self.error(
                f"{misplaced[0]} comes after the KEY VALUE config overrides, where it would be "
                "read as a config key; put every flag before the first KEY, e.g. "
                "train_net.py --config-file cfg.yaml --resume SOLVER.BASE_LR 0.01"
            )
        return namespace, extras


def _at_least_one(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(
                f"{flag} must be at least 1, got {value} (without CUDA it counts CPU processes)"
            )
        return value

    return parse


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's command line: --config-file, --resume, --eval-only, --num-gpus,
    --num-machines, --machine-rank, --dist-url, then ``KEY VALUE`` config overrides."""
    parser = _DetectionArgumentParser(
        epilog=epilog
        or (
            "Examples:\n"
            "  Train on 8 GPUs:  train_net.py --num-gpus 8 --config-file cfg.yaml\n"
            "  Override keys:    train_net.py --config-file cfg.yaml SOLVER.BASE_LR 0.001\n"
            "  Evaluate weights: train_net.py --config-file cfg.yaml --eval-only "
            "MODEL.WEIGHTS model.pth\n"
            "  Two machines:     (machine 0) train_net.py --machine-rank 0 --num-machines 2 "
            "--dist-url tcp://HOST:PORT ...\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint if it exists (model, optimizer, scheduler, "
        "iteration); otherwise load MODEL.WEIGHTS and start at iteration 0",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate the weights and exit")
    parser.add_argument(
        "--num-gpus", type=_at_least_one("--num-gpus"), default=1,
        help="processes per machine (one per GPU; CPU processes with gloo when there is no CUDA)",
    )
    parser.add_argument(
        "--num-machines", type=_at_least_one("--num-machines"), default=1,
        help="total number of machines",
    )
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default=default_dist_url(),
        help="initialization URL for torch.distributed; 'auto' meets through a temporary file "
        "(single machine only). See https://pytorch.org/docs/stable/distributed.html",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.IMS_PER_BATCH 2; "
        "everything from the first KEY on is taken, so flags go before it",
    )
    return parser


def seed_all_rng(seed: int | None = None) -> int:
    """Seed python, numpy and torch (all CUDA devices too); draws and returns a seed if None."""
    if seed is None:
        seed = int.from_bytes(os.urandom(2), "big") + os.getpid() + int(np.random.randint(2**16))
        seed %= 2**31
        logger.info("Using a generated random seed %d", seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def collect_env_info() -> str:
    """A short table of the software and hardware the run uses."""
    import assigndet

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("platform", platform.platform()),
        ("assigndet", f"{assigndet.__version__} @ {os.path.dirname(assigndet.__file__)}"),
        ("numpy", np.__version__),
        ("PyTorch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    try:
        import assigndet._C  # noqa: F401

        rows.append(("assigndet._C", "compiled"))
    except ImportError:
        rows.append(("assigndet._C", "not compiled; pure-PyTorch ops are used"))
    if torch.cuda.is_available():
        rows.append(("CUDA runtime", str(torch.version.cuda)))
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
    for name in ("torchvision", "fvcore", "iopath", "pycocotools", "cv2"):
        try:
            module = __import__(name)
            rows.append((name, getattr(module, "__version__", "unknown version")))
        except ImportError:
            rows.append((name, "not installed"))
    rows.append(("CPU threads", str(torch.get_num_threads())))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def default_setup(cfg, args: argparse.Namespace | None) -> None:
    """Create OUTPUT_DIR and the loggers; log environment, arguments and config; write
    ``OUTPUT_DIR/config.yaml`` (main process); seed every RNG with ``SEED + rank`` (or a logged
    random seed when SEED < 0); set ``cudnn.benchmark`` (not under --eval-only)."""
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir or None, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir or None, distributed_rank=rank)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Command line arguments: %s", args)
    config_file = getattr(args, "config_file", "") if args is not None else ""
    if config_file:
        with open(config_file) as f:
            logger.info("Contents of args.config_file=%s:\n%s", config_file, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)
    logger.info("Running with full config:\n%s", cfg.dump())
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not (args is not None and getattr(args, "eval_only", False)):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def default_writers(output_dir: str, max_iter: int | None = None) -> list[EventWriter]:
    """Console line, ``output_dir/metrics.json`` and TensorBoard (when installed)."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when the world size is > 1 (CUDA models get
    ``device_ids=[local rank]``); ``kwargs`` go to DDP."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and next(model.parameters()).is_cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


def check_weights_file(path: str, key: str = "MODEL.WEIGHTS") -> None:
    """Raise FileNotFoundError naming ``path`` and the config key when a local weights file is
    missing (URLs and ``detectron2://`` paths are left to the checkpointer)."""
    if path and "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path} given by {key} does not exist")


class IncompleteWeightsError(RuntimeError):
    """The weights of an evaluation or a prediction leave part of the model uninitialised."""


def load_inference_weights(cfg, model: nn.Module, resume: bool = False):
    """Load the weights ``model`` is evaluated or run with, and refuse a partial load.

    With ``resume`` and an ``OUTPUT_DIR/last_checkpoint``, that checkpoint; otherwise
    MODEL.WEIGHTS. Unless MODEL.WEIGHTS_ALLOW_PARTIAL is True, no weights at all, and weights
    that leave model keys missing, have keys the model lacks or tensors of another shape, raise
    an ``IncompleteWeightsError`` listing the keys: their evaluation would report numbers of a
    partly random model. Returns the ``DetectionCheckpointer``.
    """
    from assigndet.checkpoint import DetectionCheckpointer
    from assigndet.checkpoint.detection_checkpoint import format_incompatible_keys

    allow_partial = cfg.MODEL.WEIGHTS_ALLOW_PARTIAL
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    resuming = resume and checkpointer.has_checkpoint()
    if not resuming:
        if not cfg.MODEL.WEIGHTS and not allow_partial:
            raise IncompleteWeightsError(
                "No weights to evaluate: MODEL.WEIGHTS is empty"
                + (f" and {cfg.OUTPUT_DIR} has no last_checkpoint" if resume else "")
                + ". Set MODEL.WEIGHTS path/to/model.pth, or MODEL.WEIGHTS_ALLOW_PARTIAL True to "
                "evaluate the model's random initialisation"
            )
        check_weights_file(cfg.MODEL.WEIGHTS)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    incompatible = checkpointer.incompatible_keys
    if incompatible and not allow_partial:
        source = checkpointer.get_checkpoint_file() if resuming else cfg.MODEL.WEIGHTS
        raise IncompleteWeightsError(
            f"The weights in {source} do not fit the model ({cfg.MODEL.META_ARCHITECTURE}), "
            f"so part of it would be evaluated at its random initialisation:\n"
            f"{format_incompatible_keys(incompatible)}\n"
            "Use weights trained with this config, or set MODEL.WEIGHTS_ALLOW_PARTIAL True to "
            "evaluate anyway"
        )
    return checkpointer


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class DefaultTrainer(TrainerBase):
    """The standard training set-up from a config.

    Builds (each overridable as a classmethod): model, optimizer (``build_optimizer``), train
    loader, lr scheduler, test loaders and evaluators; wraps the model in DDP when distributed;
    trains with ``SimpleTrainer`` or ``AMPTrainer`` (SOLVER.AMP.ENABLED); checkpoints model,
    optimizer, scheduler (and grad scaler) in OUTPUT_DIR; evaluates every TEST.EVAL_PERIOD and
    at the end; writes the console line, metrics.json and TensorBoard every 20 iterations.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        if not logging.getLogger("assigndet").handlers and not logging.getLogger().handlers:
            setup_logger()  # logging is not configured at all: show progress on the console
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=False)
        if cfg.SOLVER.AMP.ENABLED:
            precision = amp_dtype(cfg.SOLVER.AMP.PRECISION)
            self._trainer: SimpleTrainer = AMPTrainer(model, data_loader, optimizer, precision)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        # the inner trainer calls after_backward on the same hooks
        self._trainer._hooks = self._hooks
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)

        from assigndet.checkpoint import DetectionCheckpointer

        checkpointables = {"optimizer": optimizer, "scheduler": self.scheduler}
        grad_scaler = getattr(self._trainer, "grad_scaler", None)
        if grad_scaler is not None:
            checkpointables["grad_scaler"] = grad_scaler
        self.checkpointer = DetectionCheckpointer(
            _unwrap(model), cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
            **checkpointables,
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self._last_eval_results: dict = {}
        self.register_hooks(self.build_hooks())

    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def data_loader(self):
        return self._trainer.data_loader

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and an ``OUTPUT_DIR/last_checkpoint``: restore model, optimizer,
        scheduler and iteration, and continue at iteration + 1. Otherwise load MODEL.WEIGHTS
        (model only; empty means the model's own initialization) and start at 0.

        A fresh start with Sampling-Free and an estimated prior (MODEL.SAMPLING_FREE.ENABLED,
        PRIOR_INIT, PRIOR_PROB < 0) first sets the classifier biases from the data
        (:func:`~assigndet.engine.prior_estimation.estimate_sampling_free_priors`), so that
        MODEL.WEIGHTS holding a detector's head still overrides them."""
        if not (resume and self.checkpointer.has_checkpoint()):
            check_weights_file(self.cfg.MODEL.WEIGHTS)
            sf = self.cfg.MODEL.SAMPLING_FREE
            if sf.ENABLED and sf.PRIOR_INIT and sf.PRIOR_PROB < 0:
                from .prior_estimation import estimate_sampling_free_priors

                estimate_sampling_free_priors(self.cfg, self.model)
        checkpoint = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = int(checkpoint.get("iteration", -1)) + 1
            logger.info("Resuming at iteration %d", self.start_iter)

    def build_hooks(self) -> list[hooks.HookBase | None]:
        cfg = self.cfg
        result: list[hooks.HookBase | None] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
        ]
        if cfg.TEST.PRECISE_BN.ENABLED:
            result.append(
                hooks.PreciseBN(
                    cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg),
                    cfg.TEST.PRECISE_BN.NUM_ITER,
                )
            )
        if comm.is_main_process():
            period = cfg.SOLVER.CHECKPOINT_PERIOD
            result.append(hooks.PeriodicCheckpointer(self.checkpointer, period))

        def test_and_save_results() -> dict:
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        result.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            result.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return result

    def build_writers(self) -> list[EventWriter]:
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def train(self) -> dict:
        """Train from ``start_iter`` to SOLVER.MAX_ITER; returns the last evaluation results."""
        super().train(self.start_iter, self.max_iter)
        if self.cfg.TEST.EXPECTED_RESULTS and comm.is_main_process():
            from assigndet.evaluation import verify_results

            verify_results(self.cfg, self._last_eval_results)
        return self._last_eval_results

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        from assigndet.modeling import build_model

        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        from assigndet.solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        from assigndet.solver import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        from assigndet.data import build_detection_train_loader

        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        from assigndet.data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        """The evaluator for the dataset's ``evaluator_type`` metadata ("coco": COCOEvaluator
        writing to OUTPUT_DIR/inference)."""
        from assigndet.data import MetadataCatalog
        from assigndet.evaluation import COCOEvaluator

        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' with evaluator_type={evaluator_type!r}; "
            "set its metadata evaluator_type to 'coco' or override DefaultTrainer.build_evaluator"
        )

    @classmethod
    def test(cls, cfg, model: nn.Module, evaluators=None) -> dict:
        """Evaluate ``model`` on every DATASETS.TEST; returns ``{dataset: results}`` (just the
        results with one dataset) and logs the ``copypaste:`` lines on the main process."""
        from assigndet.evaluation import (
            DatasetEvaluator,
            inference_on_dataset,
            print_csv_format,
        )

        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(
                f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} DATASETS.TEST"
            )
        results: OrderedDict = OrderedDict()
        comm.broadcast_buffers(model)  # the same BatchNorm statistics on every rank as saved
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, dataset_name)
                except NotImplementedError as e:
                    logger.warning("%s; skipping its evaluation", e)
                    results[dataset_name] = {}
                    continue
            results_i = inference_on_dataset(model, data_loader, evaluator)
            results[dataset_name] = results_i
            if comm.is_main_process():
                if not isinstance(results_i, dict):
                    raise TypeError(
                        f"Evaluator must return a dict on the main process, got {results_i!r}"
                    )
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(results_i)
        if len(results) == 1:
            return list(results.values())[0]
        return results

    @staticmethod
    def auto_scale_workers(cfg, num_workers: int):
        """Rescale the schedule for ``num_workers`` ranks when SOLVER.REFERENCE_WORLD_SIZE = R > 0
        and differs: with k = num_workers / R, IMS_PER_BATCH and BASE_LR are multiplied by k;
        MAX_ITER, WARMUP_ITERS, STEPS, TEST.EVAL_PERIOD and CHECKPOINT_PERIOD divided by k.
        Returns a new config (REFERENCE_WORLD_SIZE set to ``num_workers``); ``cfg`` unchanged."""
        reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if reference == 0 or reference == num_workers:
            return cfg
        if cfg.SOLVER.IMS_PER_BATCH % reference != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} must be divisible by "
                f"SOLVER.REFERENCE_WORLD_SIZE={reference}"
            )
        scale = num_workers / reference
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        solver = cfg.SOLVER
        solver.IMS_PER_BATCH = int(round(solver.IMS_PER_BATCH * scale))
        solver.BASE_LR = solver.BASE_LR * scale
        solver.MAX_ITER = int(round(solver.MAX_ITER / scale))
        solver.WARMUP_ITERS = int(round(solver.WARMUP_ITERS / scale))
        solver.STEPS = tuple(int(round(s / scale)) for s in solver.STEPS)
        cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
        solver.CHECKPOINT_PERIOD = int(round(solver.CHECKPOINT_PERIOD / scale))
        solver.REFERENCE_WORLD_SIZE = num_workers
        logger.info(
            "Auto-scaling the config to world size %d (reference %d): IMS_PER_BATCH=%d, "
            "BASE_LR=%s, MAX_ITER=%d, WARMUP_ITERS=%d, STEPS=%s, EVAL_PERIOD=%d, "
            "CHECKPOINT_PERIOD=%d",
            num_workers, reference, solver.IMS_PER_BATCH, solver.BASE_LR, solver.MAX_ITER,
            solver.WARMUP_ITERS, solver.STEPS, cfg.TEST.EVAL_PERIOD, solver.CHECKPOINT_PERIOD,
        )
        if frozen:
            cfg.freeze()
        return cfg


def amp_dtype(name: str) -> torch.dtype:
    """The torch dtype of SOLVER.AMP.PRECISION."""
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"SOLVER.AMP.PRECISION must be 'float16' or 'bfloat16', got {name!r}")
    return dtypes[name]


class DefaultPredictor:
    """Run a model from a config on single images, as detectron2's ``DefaultPredictor``.

    Given no ``model``, builds one on MODEL.DEVICE and loads MODEL.WEIGHTS, which must hold every
    weight of it (``load_inference_weights``: an empty MODEL.WEIGHTS is refused unless
    MODEL.WEIGHTS_ALLOW_PARTIAL). Given a ``model`` (weights already loaded), uses it as it is.
    Either way the model is put in eval mode, and each call resizes the image so its short side
    is INPUT.MIN_SIZE_TEST (long side at most INPUT.MAX_SIZE_TEST).

    Example::

        predictor = DefaultPredictor(cfg)  # cfg.MODEL.WEIGHTS = "output/model_final.pth"
        outputs = predictor(cv2.imread("input.jpg"))  # {"instances": Instances(...)}
    """

    def __init__(self, cfg, model: nn.Module | None = None) -> None:
        from assigndet.modeling import build_model

        self.cfg = cfg.clone()
        if model is None:
            model = build_model(self.cfg)
            load_inference_weights(self.cfg, model)
        self.model = model.eval()
        test_sets: Sequence[str] = cfg.DATASETS.TEST
        self.metadata = None
        if len(test_sets):
            from assigndet.data import MetadataCatalog

            self.metadata = MetadataCatalog.get(test_sets[0])
        from assigndet.data.transforms import ResizeShortestEdge

        # the same resize as the test mapper, so predictions match evaluation
        self.resize = ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, sample_style="choice"
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")

    def __call__(self, original_image: np.ndarray) -> dict:
        """
        Args:
            original_image: uint8 array [H, W, 3] in BGR order (as cv2.imread gives).
        Returns:
            The model's output for the image: ``{"instances": Instances(pred_boxes, scores,
            pred_classes)}`` at the original size.
        """
        if original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(
                f"DefaultPredictor expects an HxWx3 BGR image, got shape {original_image.shape}"
            )
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            original_image = np.ascontiguousarray(original_image)
            height, width = original_image.shape[:2]
            image = self.resize.get_transform(original_image).apply_image(original_image)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            inputs = {"image": tensor, "height": height, "width": width}
            return self.model([inputs])[0]
