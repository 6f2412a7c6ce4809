"""Config keys of ATSS and of the positive sample selector (PSS).

ATSS and the PSS detectors reuse ``MODEL.FCOS`` for everything they share with FCOS (classes,
levels, towers, focal loss, test-time threshold, top-k and NMS of the one-to-many mode);
``MODEL.ATSS`` holds what ATSS's assignment adds and ``MODEL.PSS`` the selector's keys.
"""

from assigndet.config import CfgNode, register_config_adder


@register_config_adder
def add_pss_config(cfg: CfgNode) -> None:
    """Add ``MODEL.ATSS`` and ``MODEL.PSS`` with the defaults of the PSS paper."""
    cfg.MODEL.ATSS = CfgNode()
    cfg.MODEL.ATSS.TOPK = 9  # candidates per level and GT, nearest anchor centres first
    cfg.MODEL.ATSS.ANCHOR_SCALE = 8.0  # side of the one square anchor per location, in strides
    cfg.MODEL.ATSS.LOC_LOSS_WEIGHT = 2.0  # weight of the GIoU loss (mmdet ATSS)

    cfg.MODEL.PSS = CfgNode()
    cfg.MODEL.PSS.NUM_CONVS = 2  # 3x3 convs of the PSS branch before its output conv
    cfg.MODEL.PSS.NORM = "GN"  # norm after each PSS conv: GN, BN, SyncBN or ""
    cfg.MODEL.PSS.PRIOR_PROB = 0.5  # initial sigmoid(pss) of the output conv's bias
    cfg.MODEL.PSS.STOP_GRADIENT = True  # detach the regression-tower feature entering the branch
    cfg.MODEL.PSS.DETACH_SCORE_FACTORS = False  # also detach sigmoid(cls), sigmoid(ctr) in P
    cfg.MODEL.PSS.USE_CENTERNESS = True  # P = s(pss) s(cls) s(ctr); False drops s(ctr) from P
    cfg.MODEL.PSS.MATCHER = "top_one"  # one-to-one labels: top_one or hungarian
    cfg.MODEL.PSS.ALPHA = 0.8  # matching quality P^(1 - ALPHA) * IoU^ALPHA
    cfg.MODEL.PSS.LOSS_WEIGHT = 1.0  # lambda1, weight of the PSS focal loss
    cfg.MODEL.PSS.RANK_LOSS_WEIGHT = 0.25  # lambda2, weight of the ranking loss
    cfg.MODEL.PSS.RANK_MARGIN = 0.5  # margin of the ranking loss
    cfg.MODEL.PSS.RANK_NUM_NEGATIVES = 100  # hardest negative locations per image in the ranking
    cfg.MODEL.PSS.USE_NMS = False  # test in one-to-many mode: base detector + NMS, no PSS
    cfg.MODEL.PSS.SCORE_THRESH_TEST = 0.0  # minimum P kept at test time (end-to-end mode)
    cfg.MODEL.PSS.TRAIN_ONLY_PSS = False  # two-step training: freeze all but the PSS branch
