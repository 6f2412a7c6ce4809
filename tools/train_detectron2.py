#!/usr/bin/env python
"""Train or evaluate any assigndet config on detectron2's own ``DefaultTrainer``.

    python tools/train_detectron2.py --config-file configs/quickstart/fcos_pss_shapes.yaml
    python tools/train_detectron2.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_detectron2.py --config-file CFG --eval-only MODEL.WEIGHTS model.pth

detectron2's command line, config (``get_cfg()`` + ``add_assigndet_config``), launcher,
trainer, data loader, mapper, DatasetCatalog and ``COCOEvaluator``; assigndet adds its models
and ``AssigndetTrainerMixin``. Dataset names assigndet knows (``coco:JSON:IMAGES``, the shapes
splits) are registered in detectron2's catalog with its ``register_coco_instances``. Unset
NUM_CLASSES keys come from the datasets, as in ``train_net.py``.
"""

from __future__ import annotations

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from assigndet.data.num_classes import mark_num_classes_unset, resolve_num_classes
from assigndet.detectron2 import AssigndetTrainer, add_assigndet_config, register_in_detectron2
from assigndet.detectron2.datasets import thing_classes
from assigndet.engine.defaults import load_inference_weights
from assigndet.engine.launch import launch_from_command_line


def setup(args):
    """detectron2's get_cfg() + assigndet's keys, the file, the overrides; frozen; set up."""
    cfg = get_cfg()
    add_assigndet_config(cfg)
    defaults = mark_num_classes_unset(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_in_detectron2([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    resolve_num_classes(cfg, defaults, thing_classes)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = AssigndetTrainer.build_model(cfg)
        # refuses no weights or a partial load unless MODEL.WEIGHTS_ALLOW_PARTIAL True
        load_inference_weights(cfg, model, resume=args.resume)
        results = AssigndetTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = AssigndetTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # detectron2's train() returns them only with TEST.EXPECTED_RESULTS; its EvalHook keeps them
    return getattr(trainer, "_last_eval_results", {})


def check_processes(args) -> None:
    """detectron2's DefaultTrainer gives each process one GPU (it passes ``device_ids`` to
    DistributedDataParallel): several processes without CUDA cannot work there."""
    if args.num_gpus * args.num_machines > 1 and not torch.cuda.is_available():
        raise SystemExit(
            f"--num-gpus {args.num_gpus} --num-machines {args.num_machines}: detectron2's "
            "DefaultTrainer runs one process per GPU, and there is no CUDA device here. Use one "
            "process, or train_net.py, whose --num-gpus counts CPU processes without CUDA"
        )


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    check_processes(args)
    launch_from_command_line(main, args, launch_fn=launch)


if __name__ == "__main__":
    invoke_main()
