#!/usr/bin/env python
"""Train or evaluate any assigndet model, with detectron2's command line.

    python train_net.py --config-file configs/quickstart/fcos_shapes.yaml
    python train_net.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume            # continue OUTPUT_DIR/last_checkpoint
    torchrun --nproc_per_node 2 train_net.py --config-file CFG  # launch joins torchrun's group

Without CUDA, --num-gpus N starts N CPU processes that talk gloo; set MODEL.DEVICE cpu.
"""

from __future__ import annotations

import os

import assigndet.projects  # noqa: F401  (methods register their meta-architectures)
from assigndet.config import load_config
from assigndet.engine import DefaultTrainer, default_argument_parser, default_setup
from assigndet.engine.defaults import check_weights_file, load_inference_weights
from assigndet.engine.launch import launch_from_command_line
from assigndet.evaluation import verify_results
from assigndet.utils import comm


class Trainer(DefaultTrainer):
    """DefaultTrainer; its ``build_evaluator`` picks the evaluator by the dataset's
    ``evaluator_type``. Subclass here to customize a run."""


def setup(args):
    """get_cfg(), then the config file, then the KEY VALUE overrides; frozen; run set-up."""
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
        if not resuming:
            check_weights_file(cfg.MODEL.WEIGHTS)  # fail before the model is built
        model = Trainer.build_model(cfg)
        # refuses no weights or a partial load unless MODEL.WEIGHTS_ALLOW_PARTIAL True
        load_inference_weights(cfg, model, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.EXPECTED_RESULTS and comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    launch_from_command_line(main, default_argument_parser().parse_args())


if __name__ == "__main__":
    invoke_main()
