"""A tiny real detector for trainer tests, and a tiny shapes dataset to train it on.

``ToyDetector`` pools two convolutions into per-class logits and one box per class; its losses
depend on the images and their ``instances``; inference follows the library's model I/O.
"""

from __future__ import annotations

import uuid

import torch
import torch.nn.functional as F
from torch import nn

from assigndet.config import get_cfg
from assigndet.data import generate_shapes_dataset, register_coco_instances
from assigndet.modeling import META_ARCH_REGISTRY
from assigndet.structures import ImageList, Instances
from assigndet.utils.events import get_event_storage

NUM_CLASSES = 5


@META_ARCH_REGISTRY.register()
class ToyDetector(nn.Module):
    # iteration at which training returns a NaN loss (None: never); set by tests
    nan_at_iter: int | None = None

    def __init__(self, cfg):
        super().__init__()
        self.num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, self.num_classes * 5, 1)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict]):
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        images = ImageList.from_tensors(images, 1)
        feats = self.conv2(F.relu(self.norm(self.conv1(images.tensor)))).mean(dim=(2, 3))
        logits = feats[:, : self.num_classes]
        boxes = feats[:, self.num_classes:].view(-1, self.num_classes, 4).sigmoid()
        if self.training:
            return self._losses(batched_inputs, images, logits, boxes)
        return self._inference(batched_inputs, images, logits, boxes)

    def _losses(self, batched_inputs, images, logits, boxes):
        targets = torch.zeros_like(logits)
        box_loss = logits.new_zeros(())
        for i, x in enumerate(batched_inputs):
            inst = x["instances"].to(self.device)
            h, w = images.image_sizes[i]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            for box, cls in zip(inst.gt_boxes, inst.gt_classes):
                targets[i, cls] = 1.0
                box_loss = box_loss + F.l1_loss(boxes[i, cls], box / scale)
        losses = {
            "loss_cls": F.binary_cross_entropy_with_logits(logits, targets),
            "loss_box": box_loss / len(batched_inputs),
        }
        if get_event_storage().iter == self.nan_at_iter:
            losses["loss_box"] = losses["loss_box"] * float("nan")
        return losses

    def _inference(self, batched_inputs, images, logits, boxes):
        results = []
        for i, x in enumerate(batched_inputs):
            h, w = x["height"], x["width"]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            results.append(
                {
                    "instances": Instances(
                        (h, w),
                        pred_boxes=boxes[i] * scale,
                        scores=logits[i].sigmoid(),
                        pred_classes=torch.arange(self.num_classes, device=self.device),
                    )
                }
            )
        return results


def register_tiny_shapes(
    root: str, names: tuple[str, str] | None = None, num_train: int = 8, num_val: int = 4
) -> tuple[str, str]:
    """Generate (or reuse) two tiny shapes splits under ``root`` and register them as ``names``
    (default: new unique names); returns the names."""
    if names is None:
        suffix = uuid.uuid4().hex[:8]
        names = (f"tiny_shapes_train_{suffix}", f"tiny_shapes_val_{suffix}")
    for name, (split, num, seed) in zip(names, (("train", num_train, 1), ("val", num_val, 2))):
        json_file, image_root = generate_shapes_dataset(
            root, split, num, seed, min_short=48, max_short=64, min_size=8.0, empty_prob=0.0
        )
        register_coco_instances(name, {}, json_file, image_root)
    return names


def toy_cfg(output_dir: str, train_name: str, val_name: str, **overrides):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "ToyDetector"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.DATASETS.TEST = (val_name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.MAX_SIZE_TRAIN = 80
    cfg.INPUT.MIN_SIZE_TEST = 48
    cfg.INPUT.MAX_SIZE_TEST = 80
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.STEPS = (4,)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    cfg.SEED = 0
    cfg.OUTPUT_DIR = output_dir
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg
