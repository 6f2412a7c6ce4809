"""Config keys of DETA (``MODEL.DETA``), with the defaults of the official ``configs/deta.sh``.

The optimizer recipe uses core keys (see ``configs/Base-DETA.yaml``): AdamW at 2e-4 with the
backbone at 0.1x (``SOLVER.BACKBONE_MULTIPLIER``), ``sampling_offsets`` at 0.1x
(``SOLVER.LR_MULTIPLIER_NAMES`` / ``VALUES``; the official recipe also names ``reference_points``,
a layer that only the one-stage model has), weight decay 1e-4 on every parameter, and
the global gradient norm clipped at 0.1.
"""

from assigndet.config import CfgNode, register_config_adder


@register_config_adder
def add_deta_config(cfg: CfgNode) -> None:
    """Add ``MODEL.DETA``."""
    d = cfg.MODEL.DETA = CfgNode()
    d.NUM_CLASSES = 80  # foreground classes (contiguous dataset ids)
    d.IN_FEATURES = ["res3", "res4", "res5"]  # backbone outputs projected to the first levels
    d.NUM_FEATURE_LEVELS = 5  # levels after the stride-2 3x3 extra projections of the last output
    d.HIDDEN_DIM = 256  # transformer width
    d.NHEADS = 8  # attention heads (deformable and decoder self-attention)
    d.ENC_LAYERS = 6  # deformable encoder layers
    d.DEC_LAYERS = 6  # decoder layers (each with a class and a box head)
    d.DIM_FEEDFORWARD = 2048  # FFN width of every layer
    d.ENC_N_POINTS = 4  # sampling points per head and level in the encoder
    d.DEC_N_POINTS = 4  # sampling points per head and level in the decoder cross-attention
    d.NUM_QUERIES = 900  # queries selected from the encoder proposals
    d.PRIOR_PROB = 0.01  # initial sigmoid of the class logits (bias -log((1 - p) / p))
    # Training: "iou" = DETA's IoU assignment with object balancing in both stages (and query
    # selection with NMS); "hungarian" = the one-to-one baseline (plain top-k query selection).
    d.MATCHER = "iou"
    d.ASSIGN_FIRST_STAGE_NMS = True  # query selection: per-level top-k, NMS and per-level quota
    d.PROPOSAL_TOPK_PER_LEVEL = 1000  # query selection: candidates kept per level before NMS
    d.PROPOSAL_NMS_THRESH = 0.9  # query selection: NMS IoU, within each level
    d.MAX_K = 4  # object balancing: positives per GT at most; <= 0 disables balancing
    d.STAGE1_IOU_THRESHOLDS = [0.3, 0.7]  # encoder assigner: negative below, positive from
    d.STAGE1_BATCH_SIZE_PER_IMAGE = 256  # encoder assigner: positives <= this x fraction
    d.STAGE1_POSITIVE_FRACTION = 0.5
    d.STAGE2_IOU_THRESHOLD = 0.6  # decoder assigner: positive from this IoU
    d.STAGE2_POSITIVE_FRACTION = 0.25  # decoder assigner: positives <= NUM_QUERIES x this
    d.CLASS_WEIGHT = 1.0  # focal classification loss weight
    d.BBOX_WEIGHT = 5.0  # L1 box loss weight
    d.GIOU_WEIGHT = 2.0  # GIoU loss weight
    d.FOCAL_ALPHA = 0.25
    d.FOCAL_GAMMA = 2.0
    d.COST_CLASS = 2.0  # Hungarian matcher costs (MATCHER "hungarian" only)
    d.COST_BBOX = 5.0
    d.COST_GIOU = 2.0
    d.TOPK_TEST = 10000  # inference: (query, class) candidates kept before NMS
    d.NMS_THRESH_TEST = 0.7  # inference: class-wise NMS IoU; <= 0 skips NMS (plain top-k)
    d.SIZE_DIVISIBILITY = 0  # pad the batch to multiples of this (0: to the largest image)
