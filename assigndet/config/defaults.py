"""Every default config key, with detectron2's names and defaults where detectron2 has the key.

Each key carries a one-line comment saying what it means. Methods add their own keys with
``add_<method>_config(cfg)`` (see ``assigndet.config.get_cfg``); this file holds only the core.
"""

from .config import CfgNode

_C = CfgNode()
_C.VERSION = 2  # config format version (detectron2's current one)

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # registered meta-architecture to build
_C.MODEL.DEVICE = "cuda"  # device the model runs on ("cuda" or "cpu")
_C.MODEL.WEIGHTS = ""  # checkpoint to load: path, detectron2://, https://, .pth or .pkl
# Evaluation and prediction refuse weights that leave keys missing, unused or mismatched (and
# an empty MODEL.WEIGHTS); True evaluates such a partly initialised model anyway.
_C.MODEL.WEIGHTS_ALLOW_PARTIAL = False  # evaluate / predict with partial or no weights
_C.MODEL.MASK_ON = False  # instance masks (not implemented by any method here; kept for configs)
_C.MODEL.KEYPOINT_ON = False  # keypoints (not implemented by any method here; kept for configs)
_C.MODEL.LOAD_PROPOSALS = False  # read precomputed proposals from DATASETS.PROPOSAL_FILES_*
# Per-channel mean/std in INPUT.FORMAT order, applied by the model as (x - mean) / std.
# The defaults fit MSRA ImageNet weights (BGR, std folded into conv1).
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]  # per-channel mean subtracted from the image
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]  # per-channel std the image is divided by

_C.MODEL.BACKBONE = CfgNode()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"  # registered backbone builder
_C.MODEL.BACKBONE.FREEZE_AT = 2  # 0: train all; 1: freeze the stem; k>=2: also freeze res2..resk

_C.MODEL.RESNETS = CfgNode()
_C.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50, 101 or 152
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # stages returned, any of stem, res2..res5
_C.MODEL.RESNETS.NUM_GROUPS = 1  # groups of the 3x3 conv: 1 for ResNet, 32 for ResNeXt-32xd
_C.MODEL.RESNETS.NORM = "FrozenBN"  # FrozenBN, BN, SyncBN, GN, or "" for none
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # bottleneck width per group at res2
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True  # stride on the 1x1 conv (MSRA) instead of the 3x3 (torch)
_C.MODEL.RESNETS.RES5_DILATION = 1  # 1, or 2 for a dilated res5 (DC5)
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256  # output channels of res2 (64 for R18/R34)
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64  # output channels of the stem
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]  # deformable 3x3 in res2..res5
_C.MODEL.RESNETS.DEFORM_MODULATED = False  # modulated (v2) deformable convolution
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1  # offset groups of the deformable convolution

_C.MODEL.FPN = CfgNode()
_C.MODEL.FPN.IN_FEATURES = []  # backbone stages fed to the FPN, e.g. ["res3", "res4", "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256  # channels of every pyramid level
_C.MODEL.FPN.NORM = ""  # norm of lateral/output convs: "", GN, BN, SyncBN, FrozenBN
_C.MODEL.FPN.FUSE_TYPE = "sum"  # top-down fusion: "sum" or "avg"

_C.MODEL.PROPOSAL_GENERATOR = CfgNode()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"  # registered proposal generator of two-stage models
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0  # proposals with a side below this are dropped

_C.MODEL.ANCHOR_GENERATOR = CfgNode()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"  # registered anchor generator
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]  # anchor sizes (per level or shared)
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]  # height / width ratios
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]  # rotated anchors only (unused here)
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0  # anchor centre offset in units of the stride

_C.MODEL.RPN = CfgNode()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"  # registered RPN head
_C.MODEL.RPN.IN_FEATURES = ["res4"]  # features the RPN reads
_C.MODEL.RPN.BOUNDARY_THRESH = -1  # drop anchors beyond the image by this many pixels; -1 keeps all
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]  # negative below the first, positive above the second
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]  # labels of the three IoU ranges
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256  # anchors sampled per image for the loss
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5  # fraction of positives among sampled anchors
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"  # smooth_l1 or giou
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0  # weight of the regression loss
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # box coder weights (wx, wy, ww, wh)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0  # smooth L1 transition point; 0 is L1
_C.MODEL.RPN.LOSS_WEIGHT = 1.0  # weight of the objectness loss
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000  # proposals kept before NMS in training (per level on FPN)
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000  # proposals kept before NMS at test time
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000  # proposals kept after NMS in training
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000  # proposals kept after NMS at test time
_C.MODEL.RPN.NMS_THRESH = 0.7  # NMS IoU threshold of proposals
_C.MODEL.RPN.CONV_DIMS = [-1]  # conv widths of the RPN head; -1 keeps the input width

_C.MODEL.ROI_HEADS = CfgNode()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"  # registered RoI heads
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80  # foreground classes (background is implicit and last)
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]  # features the RoI heads pool from
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]  # foreground IoU threshold of proposals
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]  # labels below/above the threshold
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # RoIs sampled per image for the loss
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25  # fraction of foreground among sampled RoIs
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05  # minimum score of a detection
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5  # per-class NMS IoU threshold at test time
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True  # add the GT boxes to the proposals in training

_C.MODEL.ROI_BOX_HEAD = CfgNode()
_C.MODEL.ROI_BOX_HEAD.NAME = ""  # registered box head, e.g. FastRCNNConvFCHead
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"  # smooth_l1 or giou
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0  # weight of the box regression loss
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # box coder weights
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0  # smooth L1 transition point; 0 is L1
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14  # RoI pooling output size
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0  # RoIAlign samples per bin; 0 is adaptive
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"  # ROIAlign, ROIAlignV2 (aligned=True), ROIPool
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0  # fully connected layers of the box head
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024  # width of those layers
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0  # conv layers of the box head
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256  # width of those layers
_C.MODEL.ROI_BOX_HEAD.NORM = ""  # norm of the box head convs
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False  # one box regressor for all classes
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False  # feed predicted boxes (detached) to the pooler

_C.MODEL.ROI_BOX_CASCADE_HEAD = CfgNode()
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = (  # box coder weights of each cascade stage
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)  # foreground IoU of each cascade stage

_C.MODEL.RETINANET = CfgNode()
_C.MODEL.RETINANET.NUM_CLASSES = 80  # foreground classes
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # pyramid levels read
_C.MODEL.RETINANET.NUM_CONVS = 4  # convs in each tower
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]  # negative below, positive above
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]  # labels of the three IoU ranges
_C.MODEL.RETINANET.PRIOR_PROB = 0.01  # initial foreground probability of the classifier
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05  # minimum score of a candidate
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000  # candidates kept per level before NMS
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5  # NMS IoU threshold
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # box coder weights
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0  # focal loss gamma
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25  # focal loss alpha
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1  # smooth L1 transition point
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"  # smooth_l1 or giou
_C.MODEL.RETINANET.NORM = ""  # norm in the towers: "", GN, BN

# FCOS (Tian et al.), the anchor-free baseline; key names follow AdelaiDet's FCOS.
_C.MODEL.FCOS = CfgNode()
_C.MODEL.FCOS.NUM_CLASSES = 80  # foreground classes
_C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # pyramid levels read
_C.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]  # stride of each level in IN_FEATURES
_C.MODEL.FCOS.PRIOR_PROB = 0.01  # initial foreground probability of the classifier
_C.MODEL.FCOS.INFERENCE_TH_TRAIN = 0.05  # unused by the FCOS meta-arch (AdelaiDet proposals)
_C.MODEL.FCOS.INFERENCE_TH_TEST = 0.05  # test-time candidate threshold on sigmoid(cls)
_C.MODEL.FCOS.NMS_TH = 0.6  # class-aware NMS IoU threshold
_C.MODEL.FCOS.PRE_NMS_TOPK_TRAIN = 1000  # unused by the FCOS meta-arch (AdelaiDet proposals)
_C.MODEL.FCOS.PRE_NMS_TOPK_TEST = 1000  # candidates kept per level before NMS at test time
_C.MODEL.FCOS.POST_NMS_TOPK_TRAIN = 100  # unused by the FCOS meta-arch (AdelaiDet proposals)
_C.MODEL.FCOS.POST_NMS_TOPK_TEST = 100  # detections kept after NMS (also <= DETECTIONS_PER_IMAGE)
_C.MODEL.FCOS.NORM = "GN"  # norm in the towers, shared by all levels: GN, BN, SyncBN or ""
_C.MODEL.FCOS.USE_SCALE = True  # learnable scalar per level on the regression output
_C.MODEL.FCOS.THRESH_WITH_CTR = False  # threshold sigmoid(cls)*sigmoid(ctr) instead of sigmoid(cls)
_C.MODEL.FCOS.LOSS_ALPHA = 0.25  # focal loss alpha
_C.MODEL.FCOS.LOSS_GAMMA = 2.0  # focal loss gamma
_C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]  # level bounds of max(l,t,r,b), [low, high)
_C.MODEL.FCOS.NUM_CLS_CONVS = 4  # convs in the classification tower
_C.MODEL.FCOS.NUM_BOX_CONVS = 4  # convs in the regression tower
_C.MODEL.FCOS.NUM_SHARE_CONVS = 0  # convs shared by both towers before they split
_C.MODEL.FCOS.CENTER_SAMPLE = True  # positives only near the box centre
_C.MODEL.FCOS.POS_RADIUS = 1.5  # centre sampling radius in units of the stride
_C.MODEL.FCOS.LOC_LOSS_TYPE = "giou"  # box loss: iou (-log IoU), linear_iou (1 - IoU), giou
_C.MODEL.FCOS.CENTERNESS_ON_REG = True  # centerness predicted from the regression tower
_C.MODEL.FCOS.NORM_REG_TARGETS = True  # regress ltrb / stride with ReLU instead of exp
_C.MODEL.FCOS.TOP_LEVELS = 2  # extra levels (P6, P7) built on top of the FPN

# Sampling-Free (Chen et al., TIP 2021): CE over all samples + prior bias + guided loss scaling.
# One switch for all three parts; each alone, or on top of focal loss or sampling, does not help.
_C.MODEL.SAMPLING_FREE = CfgNode()
_C.MODEL.SAMPLING_FREE.ENABLED = False  # replace focal loss / sampling by the three parts
_C.MODEL.SAMPLING_FREE.PRIOR_PROB = -1.0  # > 0: classifier prior (FCOS 1e-4); -1: estimated
_C.MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES = 200  # training images the assigner sees for the estimate
_C.MODEL.SAMPLING_FREE.PRIOR_PROB_MIN = 1e-6  # lower clamp of the estimated prior
_C.MODEL.SAMPLING_FREE.PRIOR_PROB_MAX = 0.5  # upper clamp of the estimated prior
_C.MODEL.SAMPLING_FREE.GUIDANCE = "global"  # loc/cls ratio over all ranks, or "local" (official)
_C.MODEL.SAMPLING_FREE.DELTA_CLAMP = [1e-2, 1e2]  # [min, max] of delta, [] for none (extrapolated)
_C.MODEL.SAMPLING_FREE.SCORE_THRESH_TEST = 1e-3  # test-time score threshold (CE scores are lower)
# Ablations of the paper's Table II: False drops one device while keeping plain CE
_C.MODEL.SAMPLING_FREE.PRIOR_INIT = True  # False: classifier bias 0 (prior 0.5), no estimate
_C.MODEL.SAMPLING_FREE.GUIDED = True  # False: raw CE / normaliser, no guidance and no delta

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = CfgNode()
_C.INPUT.MIN_SIZE_TRAIN = (800,)  # short-side sizes for training (choice) or [min, max] (range)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # how MIN_SIZE_TRAIN is sampled: choice or range
_C.INPUT.MAX_SIZE_TRAIN = 1333  # cap on the long side in training
_C.INPUT.MIN_SIZE_TEST = 800  # short side at test time; 0 disables resizing
_C.INPUT.MAX_SIZE_TEST = 1333  # cap on the long side at test time
_C.INPUT.RANDOM_FLIP = "horizontal"  # horizontal, vertical or none
_C.INPUT.FORMAT = "BGR"  # channel order the model gets: BGR or RGB
_C.INPUT.MASK_FORMAT = "polygon"  # polygon or bitmask (masks unused here)
_C.INPUT.CROP = CfgNode({"ENABLED": False})  # random crop before resizing
_C.INPUT.CROP.TYPE = "relative_range"  # relative, relative_range, absolute, absolute_range
_C.INPUT.CROP.SIZE = [0.9, 0.9]  # crop size, interpreted according to CROP.TYPE
_C.INPUT.CROP.PROBABILITY = 1.0  # chance that an image goes through the crop branch
_C.INPUT.CROP.RESIZE_BEFORE = []  # short sides (choice, no cap) resized to before the crop

# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CfgNode()
_C.DATASETS.TRAIN = ()  # registered dataset names to train on
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()  # precomputed proposal files, one per training dataset
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000  # precomputed proposals kept in training
_C.DATASETS.TEST = ()  # registered dataset names to evaluate on
_C.DATASETS.PROPOSAL_FILES_TEST = ()  # precomputed proposal files, one per test dataset
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000  # precomputed proposals kept at test time

# ---------------------------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------------------------
_C.DATALOADER = CfgNode()
_C.DATALOADER.NUM_WORKERS = 4  # loader worker processes per rank
_C.DATALOADER.CHECK_IMAGES = False  # decode every training image once before training starts
_C.DATALOADER.ASPECT_RATIO_GROUPING = True  # batch landscape and portrait images separately
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"  # TrainingSampler or RepeatFactorTrainingSampler
_C.DATALOADER.REPEAT_THRESHOLD = 0.0  # frequency threshold t of RepeatFactorTrainingSampler
_C.DATALOADER.REPEAT_SQRT = True  # repeat factor sqrt(t / f) (True) or t / f (False)
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True  # drop training images with no non-crowd object

# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
_C.SOLVER.OPTIMIZER = "SGD"  # SGD (momentum) or ADAMW
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # WarmupMultiStepLR or WarmupCosineLR
_C.SOLVER.MAX_ITER = 40000  # training iterations
_C.SOLVER.BASE_LR = 0.001  # learning rate for IMS_PER_BATCH images per step
_C.SOLVER.BASE_LR_END = 0.0  # final learning rate of the cosine schedule
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.NESTEROV = False  # Nesterov momentum
_C.SOLVER.WEIGHT_DECAY = 0.0001  # weight decay of weights
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay of norm-layer parameters
_C.SOLVER.WEIGHT_DECAY_BIAS = None  # weight decay of biases; None means WEIGHT_DECAY
_C.SOLVER.BIAS_LR_FACTOR = 1.0  # learning-rate multiplier of biases
_C.SOLVER.BACKBONE_MULTIPLIER = 1.0  # learning-rate multiplier of backbone parameters
_C.SOLVER.LR_MULTIPLIER_NAMES = []  # substrings of parameter names given lr multipliers
_C.SOLVER.LR_MULTIPLIER_VALUES = []  # lr multiplier per LR_MULTIPLIER_NAMES entry; first match wins
_C.SOLVER.GAMMA = 0.1  # multiplier at each step of WarmupMultiStepLR
_C.SOLVER.STEPS = (30000,)  # iterations at which the learning rate is multiplied by GAMMA
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000  # learning-rate factor at iteration 0 of the warmup
_C.SOLVER.WARMUP_ITERS = 1000  # warmup length in iterations
_C.SOLVER.WARMUP_METHOD = "linear"  # linear or constant warmup
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # save a checkpoint every this many iterations
_C.SOLVER.IMS_PER_BATCH = 16  # images per step over all ranks
_C.SOLVER.REFERENCE_WORLD_SIZE = 0  # world size the schedule was written for; 0 disables scaling
_C.SOLVER.CLIP_GRADIENTS = CfgNode({"ENABLED": False})  # gradient clipping
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"  # value, norm (per tensor) or full_model (global)
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0  # the clip value, or the maximum norm
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0  # p of the p-norm for "norm" and "full_model"
_C.SOLVER.AMP = CfgNode({"ENABLED": False})  # automatic mixed precision
_C.SOLVER.AMP.PRECISION = "float16"  # autocast dtype: float16 (with a grad scaler) or bfloat16

# ---------------------------------------------------------------------------------------------
# Test
# ---------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
_C.TEST.EXPECTED_RESULTS = []  # [[task, metric, value, tolerance], ...] checked after testing
_C.TEST.EVAL_PERIOD = 0  # evaluate every this many iterations; 0 only at the end
_C.TEST.KEYPOINT_OKS_SIGMAS = []  # keypoint OKS sigmas (unused here)
_C.TEST.DETECTIONS_PER_IMAGE = 100  # maximum detections per image
_C.TEST.AUG = CfgNode({"ENABLED": False})  # test-time augmentation
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)  # TTA short sides
_C.TEST.AUG.MAX_SIZE = 4000  # TTA long-side cap
_C.TEST.AUG.FLIP = True  # TTA adds horizontally flipped images
_C.TEST.PRECISE_BN = CfgNode({"ENABLED": False})  # recompute BN statistics before evaluation
_C.TEST.PRECISE_BN.NUM_ITER = 200  # iterations used for precise BN

# ---------------------------------------------------------------------------------------------
# Miscellaneous
# ---------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"  # where checkpoints, logs, metrics and predictions go
_C.SEED = -1  # random seed of python, numpy and torch (plus the rank); negative draws one
_C.CUDNN_BENCHMARK = False  # let cuDNN pick the fastest convolution algorithms
_C.VIS_PERIOD = 0  # write training visualizations every this many iterations; 0 disables
_C.GLOBAL = CfgNode()  # global switches kept for detectron2 configs
_C.GLOBAL.HACK = 1.0  # unused; detectron2 configs may set it
