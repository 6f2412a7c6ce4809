"""Config keys of CenterNet (the first stage of CenterNet2, and the one-stage CenterNet*).

``MODEL.CENTERNET`` holds every key of the official CenterNet2 code with its default there; the
released configs (``Base-CenterNet2.yaml``, ``CenterNet-FPN_R50_1x.yaml``) override a few of them.
``MODEL.ROI_BOX_HEAD`` gets the second-stage extras of the same code (sigmoid CE, federated loss,
score fusion), read by the CenterNet2 RoI heads.

Keys accepted for configs but not implemented here (``USE_DEFORMABLE``, ``AS_PROPOSAL``) make the
builders raise ``NotImplementedError`` when set to anything but their default.
"""

from assigndet.config import CfgNode, register_config_adder


@register_config_adder
def add_centernet_config(cfg: CfgNode) -> None:
    """Add ``MODEL.CENTERNET`` and the CenterNet2 ``MODEL.ROI_BOX_HEAD`` keys."""
    c = cfg.MODEL.CENTERNET = CfgNode()
    c.NUM_CLASSES = 80  # foreground classes of the class heatmap (one-stage CenterNet*)
    c.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # pyramid levels read, fine to coarse
    c.FPN_STRIDES = [8, 16, 32, 64, 128]  # stride of each level in IN_FEATURES
    c.PRIOR_PROB = 0.01  # initial sigmoid of the heatmap outputs (bias -log((1 - p) / p))
    c.INFERENCE_TH = 0.05  # candidates need a heatmap probability above this (train and test)
    c.CENTER_NMS = False  # keep 3x3 max-pool peaks of the heatmap instead of running NMS
    c.NMS_TH_TRAIN = 0.6  # NMS IoU threshold of the outputs in training (proposals)
    c.NMS_TH_TEST = 0.6  # NMS IoU threshold of the outputs at test time; <= 0 skips NMS
    c.PRE_NMS_TOPK_TRAIN = 1000  # candidates kept per level and image before NMS in training
    c.POST_NMS_TOPK_TRAIN = 100  # outputs kept per image after NMS in training (ties kept)
    c.PRE_NMS_TOPK_TEST = 1000  # candidates kept per level and image before NMS at test time
    c.POST_NMS_TOPK_TEST = 100  # outputs kept per image after NMS at test time (ties kept)
    c.NORM = "GN"  # norm in the towers: GN (25 groups when channels % 32 != 0), BN, SyncBN, ""
    c.USE_DEFORMABLE = False  # deformable last tower conv (not implemented: must stay False)
    c.NUM_CLS_CONVS = 4  # convs of the class tower (none are built with ONLY_PROPOSAL)
    c.NUM_BOX_CONVS = 4  # convs of the box tower (which also feeds the agnostic heatmap)
    c.NUM_SHARE_CONVS = 0  # convs shared by both towers, before they split
    c.LOC_LOSS_TYPE = "giou"  # box loss with +1 IoU smoothing: giou, iou or linear_iou
    c.SIGMOID_CLAMP = 1e-4  # heatmap probabilities clamped to [this, 1 - this] in the focal loss
    c.HM_MIN_OVERLAP = 0.8  # sets the gaussian size: delta = (1 - this) / (1 + this)
    c.MIN_RADIUS = 4  # floor of the gaussian radius r (r^2 = max(2 delta^2 area, this^2)), pixels
    # per level, the inclusive range [lo, hi] of box half-diagonals assigned to it, in pixels
    c.SOI = [[0, 80], [64, 160], [128, 320], [256, 640], [512, 10000000]]
    c.POS_WEIGHT = 1.0  # weight of the heatmap focal loss on positives
    c.NEG_WEIGHT = 1.0  # weight of the heatmap focal loss on negatives
    c.REG_WEIGHT = 2.0  # weight of the box (GIoU) loss
    c.HM_FOCAL_BETA = 4  # beta of the (1 - Y)^beta down-weighting of negatives near centres
    c.HM_FOCAL_ALPHA = 0.25  # alpha of the heatmap focal loss (1 - alpha on negatives)
    c.LOSS_GAMMA = 2.0  # gamma of the heatmap focal loss
    c.WITH_AGN_HM = False  # add a class-agnostic heatmap (agn_hm) on the box tower
    c.ONLY_PROPOSAL = False  # first stage of CenterNet2: agnostic heatmap only, no class branch
    c.AS_PROPOSAL = False  # class heatmap x agnostic heatmap as proposals (not implemented)
    c.IGNORE_HIGH_FP = -1.0  # > 0: drop negatives whose probability is >= this; <= 0 keeps all
    c.MORE_POS = False  # also make 3x3-window cells with a low box loss positives (CenterNet*)
    c.MORE_POS_THRESH = 0.2  # box-loss threshold of those extra positives
    c.MORE_POS_TOPK = 9  # extra positives threshold: at most the topk-th lowest loss per object
    c.NOT_NORM_REG = True  # average the box loss over cells; False weights cells by the heatmap
    c.NOT_NMS = False  # skip NMS of the outputs (set implicitly by CENTER_NMS)
    c.NO_REDUCE = False  # normalise losses by this rank's counts instead of the all-rank mean

    box = cfg.MODEL.ROI_BOX_HEAD
    box.USE_SIGMOID_CE = False  # second stage: sigmoid BCE over foreground classes, not softmax
    box.PRIOR_PROB = 0.01  # initial sigmoid of the classifier when USE_SIGMOID_CE
    box.USE_EQL_LOSS = False  # equalization loss on rare classes (LVIS)
    box.CAT_FREQ_PATH = "datasets/lvis/lvis_v1_train_cat_info.json"  # class image counts (JSON)
    box.EQL_FREQ_CAT = 200  # classes counted as frequent by the equalization loss
    box.USE_FED_LOSS = False  # federated loss: BCE on a sampled subset of classes (LVIS)
    box.FED_LOSS_NUM_CAT = 50  # classes in the federated subset, background included
    box.FED_LOSS_FREQ_WEIGHT = 0.5  # sampling probability of a class ~ image_count^this
    box.MULT_PROPOSAL_SCORE = False  # final score sqrt(second-stage prob x first-stage score)
