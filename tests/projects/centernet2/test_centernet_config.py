"""MODEL.CENTERNET defaults and the official CenterNet2 / CenterNet* config files."""

from __future__ import annotations

import pytest

from assigndet.config import get_cfg

# The key set of the official centernet/config.py, with its defaults.
OFFICIAL_DEFAULTS = {
    "NUM_CLASSES": 80,
    "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
    "FPN_STRIDES": [8, 16, 32, 64, 128],
    "PRIOR_PROB": 0.01,
    "INFERENCE_TH": 0.05,
    "CENTER_NMS": False,
    "NMS_TH_TRAIN": 0.6,
    "NMS_TH_TEST": 0.6,
    "PRE_NMS_TOPK_TRAIN": 1000,
    "POST_NMS_TOPK_TRAIN": 100,
    "PRE_NMS_TOPK_TEST": 1000,
    "POST_NMS_TOPK_TEST": 100,
    "NORM": "GN",
    "USE_DEFORMABLE": False,
    "NUM_CLS_CONVS": 4,
    "NUM_BOX_CONVS": 4,
    "NUM_SHARE_CONVS": 0,
    "LOC_LOSS_TYPE": "giou",
    "SIGMOID_CLAMP": 1e-4,
    "HM_MIN_OVERLAP": 0.8,
    "MIN_RADIUS": 4,
    "SOI": [[0, 80], [64, 160], [128, 320], [256, 640], [512, 10000000]],
    "POS_WEIGHT": 1.0,
    "NEG_WEIGHT": 1.0,
    "REG_WEIGHT": 2.0,
    "HM_FOCAL_BETA": 4,
    "HM_FOCAL_ALPHA": 0.25,
    "LOSS_GAMMA": 2.0,
    "WITH_AGN_HM": False,
    "ONLY_PROPOSAL": False,
    "AS_PROPOSAL": False,
    "IGNORE_HIGH_FP": -1.0,
    "MORE_POS": False,
    "MORE_POS_THRESH": 0.2,
    "MORE_POS_TOPK": 9,
    "NOT_NORM_REG": True,
    "NOT_NMS": False,
    "NO_REDUCE": False,
}

BOX_HEAD_EXTRAS = {
    "USE_SIGMOID_CE": False,
    "PRIOR_PROB": 0.01,
    "USE_EQL_LOSS": False,
    "CAT_FREQ_PATH": "datasets/lvis/lvis_v1_train_cat_info.json",
    "EQL_FREQ_CAT": 200,
    "USE_FED_LOSS": False,
    "FED_LOSS_NUM_CAT": 50,
    "FED_LOSS_FREQ_WEIGHT": 0.5,
    "MULT_PROPOSAL_SCORE": False,
}

# configs/Base-CenterNet2.yaml and configs/CenterNet2_R50_1x.yaml of the official code
BASE_CENTERNET2 = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  PROPOSAL_GENERATOR:
    NAME: "CenterNet"
  BACKBONE:
    NAME: "build_p67_resnet_fpn_backbone"
  WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
  RESNETS:
    DEPTH: 50
    OUT_FEATURES: ["res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res3", "res4", "res5"]
  ROI_HEADS:
    NAME: CustomCascadeROIHeads
    IN_FEATURES: ["p3", "p4", "p5", "p6", "p7"]
    IOU_THRESHOLDS: [0.6]
    NMS_THRESH_TEST: 0.7
  ROI_BOX_CASCADE_HEAD:
    IOUS: [0.6, 0.7, 0.8]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
    CLS_AGNOSTIC_BBOX_REG: True
    MULT_PROPOSAL_SCORE: True
  CENTERNET:
    REG_WEIGHT: 1.
    NOT_NORM_REG: True
    ONLY_PROPOSAL: True
    WITH_AGN_HM: True
    INFERENCE_TH: 0.0001
    PRE_NMS_TOPK_TRAIN: 4000
    POST_NMS_TOPK_TRAIN: 2000
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TEST: 256
    NMS_TH_TRAIN: 0.9
    NMS_TH_TEST: 0.9
    POS_WEIGHT: 0.5
    NEG_WEIGHT: 0.5
    IGNORE_HIGH_FP: 0.85
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
  STEPS: (60000, 80000)
  MAX_ITER: 90000
  CHECKPOINT_PERIOD: 1000000000
  WARMUP_ITERS: 4000
  WARMUP_FACTOR: 0.00025
  CLIP_GRADIENTS:
    ENABLED: True
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
OUTPUT_DIR: "./output/CenterNet2/auto"
"""

# configs/Base-CenterNet-FPN.yaml and configs/CenterNet-FPN_R50_1x.yaml of the official code
BASE_CENTERNET_FPN = """\
MODEL:
  META_ARCHITECTURE: "CenterNetDetector"
  PROPOSAL_GENERATOR:
    NAME: "CenterNet"
  BACKBONE:
    NAME: "build_p67_resnet_fpn_backbone"
  WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
  RESNETS:
    DEPTH: 50
    OUT_FEATURES: ["res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res3", "res4", "res5"]
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.01
  STEPS: (60000, 80000)
  MAX_ITER: 90000
  CHECKPOINT_PERIOD: 1000000000
  WARMUP_ITERS: 4000
  WARMUP_FACTOR: 0.00025
  CLIP_GRADIENTS:
    ENABLED: True
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
OUTPUT_DIR: "./output/CenterNet2/auto"
"""


def test_defaults_are_the_official_ones():
    cfg = get_cfg()
    assert dict(cfg.MODEL.CENTERNET) == OFFICIAL_DEFAULTS
    for key, value in BOX_HEAD_EXTRAS.items():
        assert cfg.MODEL.ROI_BOX_HEAD[key] == value, key


def test_centernet2_r50_1x_config_merges(tmp_path):
    (tmp_path / "Base-CenterNet2.yaml").write_text(BASE_CENTERNET2)
    (tmp_path / "CenterNet2_R50_1x.yaml").write_text('_BASE_: "Base-CenterNet2.yaml"\n')
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "CenterNet2_R50_1x.yaml"))
    c = cfg.MODEL.CENTERNET
    assert (c.ONLY_PROPOSAL, c.WITH_AGN_HM, c.NOT_NORM_REG) == (True, True, True)
    assert (c.POS_WEIGHT, c.NEG_WEIGHT, c.REG_WEIGHT, c.IGNORE_HIGH_FP) == (0.5, 0.5, 1.0, 0.85)
    assert (c.INFERENCE_TH, c.NMS_TH_TRAIN, c.NMS_TH_TEST) == (0.0001, 0.9, 0.9)
    assert (c.PRE_NMS_TOPK_TRAIN, c.POST_NMS_TOPK_TRAIN) == (4000, 2000)
    assert (c.PRE_NMS_TOPK_TEST, c.POST_NMS_TOPK_TEST) == (1000, 256)
    assert c.MORE_POS is False
    assert cfg.MODEL.ROI_BOX_HEAD.MULT_PROPOSAL_SCORE is True
    assert cfg.MODEL.BACKBONE.NAME == "build_p67_resnet_fpn_backbone"
    assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.6, 0.7, 0.8]


def test_centernet_fpn_r50_1x_config_merges(tmp_path):
    (tmp_path / "Base-CenterNet-FPN.yaml").write_text(BASE_CENTERNET_FPN)
    (tmp_path / "CenterNet-FPN_R50_1x.yaml").write_text(
        '_BASE_: "Base-CenterNet-FPN.yaml"\nMODEL:\n  CENTERNET:\n    MORE_POS: True'
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "CenterNet-FPN_R50_1x.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "CenterNetDetector"
    assert cfg.MODEL.CENTERNET.MORE_POS is True
    expected = dict(OFFICIAL_DEFAULTS, MORE_POS=True)
    assert dict(cfg.MODEL.CENTERNET) == expected
    assert cfg.SOLVER.BASE_LR == 0.01


def test_unknown_centernet_key_is_rejected():
    cfg = get_cfg()
    with pytest.raises(KeyError, match="MODEL.CENTERNET"):
        cfg.merge_from_list(["MODEL.CENTERNET.NOT_A_KEY", "1"])
