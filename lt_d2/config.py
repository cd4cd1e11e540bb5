# Copyright (c) lt_d2 contributors.
"""lt_d2's config keys. Call ``add_lt_config(cfg)`` on ``get_cfg()`` before merging a file.

Every key is new (none shadows a detectron2 key); lt_d2 reuses detectron2's own keys where a
feature is only a new value of one (``MODEL.ROI_HEADS.NAME: LTROIHeads``,
``DATALOADER.SAMPLER_TRAIN``, ``MODEL.BACKBONE.NAME: build_tiny_net_fpn_backbone``).
"""
from detectron2.config import CfgNode as CN


def add_tiny_net_config(cfg):
    cfg.MODEL.TINY_NET = CN()
    # Output channels of the four stages res2..res5 (strides 4, 8, 16, 32) of the small
    # from-scratch backbone used for the synthetic dataset (lt_d2/modeling/tiny_backbone.py).
    cfg.MODEL.TINY_NET.CHANNELS = [32, 64, 96, 128]
    # Normalization after every conv: "BN", "GN", "SyncBN", or "" for none.
    cfg.MODEL.TINY_NET.NORM = "BN"
    # Stages the backbone returns (the FPN reads MODEL.FPN.IN_FEATURES among these).
    cfg.MODEL.TINY_NET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def add_lt_model_config(cfg):
    """``MODEL.LT``: the classification loss and classifier, and each method's keys."""
    cfg.MODEL.LT = CN()
    # ROI classification loss, a name in lt_d2.modeling.losses.CLS_LOSS_REGISTRY: SoftmaxCELoss
    # (detectron2's), SigmoidCELoss, FederatedLoss, EQLLoss, EQLv2Loss, ACSLLoss, SeesawLoss,
    # DistributionBalancedLoss, FCBLLoss. The loss also decides the number of logits and how
    # they become scores at test time.
    cfg.MODEL.LT.CLS_LOSS = "SoftmaxCELoss"
    # Classifier layer: "linear" (detectron2's) or "cosine" (scale * cos(x, w) + b, the
    # normalised linear layer of the Seesaw LVIS configs).
    cfg.MODEL.LT.CLASSIFIER = "linear"
    # Temperature (scale) of the cosine classifier (Seesaw: 20).
    cfg.MODEL.LT.COSINE_SCALE = 20.0
    # Backbone batch norm as mmdetection's norm_eval=True with trainable affine parameters (the
    # torchvision-style backbones of the EQL, BACL and ACSL projects): running statistics are
    # used and kept as loaded, weight and bias train. Needs MODEL.RESNETS.NORM "BN" and the
    # backbone build_lt_resnet_fpn_backbone / build_lt_resnet_backbone.
    cfg.MODEL.LT.NORM_EVAL = False

    add_cascade_config(cfg)
    add_eql_config(cfg)
    add_acsl_config(cfg)
    add_seesaw_config(cfg)
    add_db_config(cfg)

    # Decoupled stage two: names of the parameters that train; every other parameter is frozen
    # (and batch-norm statistics with it). Each entry is a parameter name, a dotted prefix
    # ("roi_heads.box_predictor.cls_score") or a glob ("roi_heads.box_predictor.*.cls_score.*").
    # Empty: everything trains (stage one).
    cfg.MODEL.LT.TRAINABLE = []

    add_bags_config(cfg)
    add_bacl_config(cfg)


def add_cascade_config(cfg):
    cfg.MODEL.LT.CASCADE = CN()
    # LTCascadeROIHeads: weight of each stage's losses, one per stage (ACSL: [1.0, 0.5, 0.25]).
    # Empty: every stage weighs 1, as detectron2's CascadeROIHeads.
    cfg.MODEL.LT.CASCADE.STAGE_LOSS_WEIGHTS = []
    # LTCascadeROIHeads test scores: "mean_probs" (detectron2: the mean over stages of each
    # stage's per-class scores) or "mean_logits" (the ACSL official code: the scores of the
    # stage-averaged logits).
    cfg.MODEL.LT.CASCADE.TEST_SCORE = "mean_probs"
    # LTCascadeROIHeads: scale the gradient that each stage's box head sends back into the pooled
    # features by 1 / #stages (True: detectron2, which adds the stage losses). False: no scaling,
    # as mmdetection's Cascade R-CNN (the ACSL configs).
    cfg.MODEL.LT.CASCADE.SCALE_FEATURE_GRADIENT = True


def add_eql_config(cfg):
    """EQL and EQLv2."""
    cfg.MODEL.LT.EQL = CN()
    # Tail threshold lambda on image frequency (image_count / #training images with
    # annotations): LVIS v0.5 0.00177, LVIS v1 0.0011.
    cfg.MODEL.LT.EQL.LAMBDA = 0.00177
    # What LAMBDA thresholds: "image" (image_count / #training images with annotations < LAMBDA,
    # the LVIS configs) or "instance" (training instance count < LAMBDA, the official
    # OpenImages EQL config with LAMBDA 1652).
    cfg.MODEL.LT.EQL.FREQUENCY = "image"

    cfg.MODEL.LT.EQLV2 = CN()
    # gamma and mu of the mapping q_neg = sigmoid(gamma (g - mu)) of the gradient ratio g.
    cfg.MODEL.LT.EQLV2.GAMMA = 12.0
    cfg.MODEL.LT.EQLV2.MU = 0.8
    # alpha in q_pos = 1 + alpha (1 - q_neg).
    cfg.MODEL.LT.EQLV2.ALPHA = 4.0


def add_acsl_config(cfg):
    cfg.MODEL.LT.ACSL = CN()
    # Score threshold xi: a foreground RoI suppresses the classes it scores at least xi.
    cfg.MODEL.LT.ACSL.SCORE_THRESH = 0.7


def add_seesaw_config(cfg):
    cfg.MODEL.LT.SEESAW = CN()
    # Mitigation exponent p, compensation exponent q, and the clamp eps of the label's score.
    cfg.MODEL.LT.SEESAW.P = 0.8
    cfg.MODEL.LT.SEESAW.Q = 2.0
    cfg.MODEL.LT.SEESAW.EPS = 0.01


def add_db_config(cfg):
    """Distribution-balanced loss (DB-loss)."""
    cfg.MODEL.LT.DB = CN()
    # Re-balancing map w = alpha + sigmoid(beta (r - mu)) (the code's map_param alpha/beta/gamma;
    # defaults: the COCO-MLT configuration).
    cfg.MODEL.LT.DB.ALPHA = 0.1
    cfg.MODEL.LT.DB.BETA = 10.0
    cfg.MODEL.LT.DB.MU = 0.2
    # Negative-tolerant regularisation: negative logit scale lambda and bias factor kappa.
    cfg.MODEL.LT.DB.NEG_SCALE = 2.0
    cfg.MODEL.LT.DB.INIT_BIAS = 0.05
    # Focal modulation (on/off), its exponent gamma and factor b (balance_param).
    cfg.MODEL.LT.DB.FOCAL = True
    cfg.MODEL.LT.DB.FOCAL_GAMMA = 2.0
    cfg.MODEL.LT.DB.BALANCE = 2.0
    # Per-element weight: "rebalance" (the map above), "inv" (N_train / n_i), "sqrt_inv" (its
    # square root), "CB" (class-balanced, (1 - CB_BETA) / (1 - CB_BETA^n)) or "none" (weight 1).
    # REWEIGHT "none", FOCAL False, NEG_SCALE 1 and INIT_BIAS 0 give plain BCE.
    cfg.MODEL.LT.DB.REWEIGHT = "rebalance"
    # Class-balanced weight: beta, and n per class ("by_class") or per sample from its positive
    # labels ("average_n": mean count, "average_w": mean weight, "min_n": smallest count; a
    # sample without positives weighs 1 - beta).
    cfg.MODEL.LT.DB.CB_BETA = 0.9
    cfg.MODEL.LT.DB.CB_MODE = "average_w"
    # Normalise the weights: "by_instance" (by their maximum over classes), "by_batch" (by their
    # maximum over the batch) or "none".
    cfg.MODEL.LT.DB.WEIGHT_NORM = "none"
    # The official code divides kappa's bias by lambda (a bug its authors confirmed; released
    # numbers include it). True removes the division.
    cfg.MODEL.LT.DB.FIX_INIT_BIAS_BUG = False


def add_bags_config(cfg):
    cfg.MODEL.LT.BAGS = CN()
    # Group boundaries on training instance counts: groups <10, 10-99, 100-999, >=1000.
    cfg.MODEL.LT.BAGS.BIN_SPLIT = [10, 100, 1000]
    # "others" RoIs sampled per RoI of the group's classes (beta).
    cfg.MODEL.LT.BAGS.OTHERS_RATIO = 8.0
    # Renormalise the merged class scores so each RoI's scores sum to 1 (False: the official
    # merge, group softmax times P(foreground), whose rows sum to more than 1).
    cfg.MODEL.LT.BAGS.NORMALIZE_SCORES = True


def add_bacl_config(cfg):
    """BACL: feature hallucination and the FCBL loss."""
    cfg.MODEL.LT.HALLUCINATION = CN()
    # Add BACL's hallucinated features to the classification loss (LTROIHeads; the loss must keep
    # a confusion matrix, i.e. FCBLLoss). Off: the ROI heads own no hallucinator (same keys).
    cfg.MODEL.LT.HALLUCINATION.ENABLED = False
    # Registry name of the hallucinator.
    cfg.MODEL.LT.HALLUCINATION.NAME = "FeatureHallucinator"
    # BACL's feature hallucination module (lt_d2/modeling/hallucination.py): EMA weight of a new
    # batch's per-class feature mean / variance (the official decay ratio 0.1).
    cfg.MODEL.LT.HALLUCINATION.MOMENTUM = 0.1
    # Classes drawn per iteration (probability ~ 1 - accuracy) and features sampled per class.
    cfg.MODEL.LT.HALLUCINATION.NUM_CLASSES = 8
    cfg.MODEL.LT.HALLUCINATION.NUM_PER_CLASS = 12
    # Compute the statistics over all processes, so every rank holds the same (official: False).
    cfg.MODEL.LT.HALLUCINATION.SYNC_STATS = True

    cfg.MODEL.LT.FCBL = CN()
    # Margin scale alpha of m_ij = alpha log(cm[y, j] / cm[j, y]) (BACL configs: 0.85).
    cfg.MODEL.LT.FCBL.ALPHA = 0.85
    # Re-weighting: a foreground RoI's negatives count if scored >= its label or >= this.
    cfg.MODEL.LT.FCBL.PROB_THRESH = 0.7
    # Apply the re-weighting (BACL's classifier stage: on from the first iteration).
    cfg.MODEL.LT.FCBL.REWEIGHT = True


def add_lt_multilabel_config(cfg):
    cfg.MODEL.LT.MULTILABEL = CN()
    # MultiLabelClassifier (lt_d2/modeling/multilabel_classifier.py): number of classes, each a
    # sigmoid output (COCO-MLT 80, VOC-MLT 20).
    cfg.MODEL.LT.MULTILABEL.NUM_CLASSES = 80
    # Backbone output that the pooled-FC neck reads (ResNet: "res5").
    cfg.MODEL.LT.MULTILABEL.IN_FEATURE = "res5"
    # Pooled-FC neck of the DB-loss project: global average pool -> FC to this width -> BN1d ->
    # dropout with this probability.
    cfg.MODEL.LT.MULTILABEL.NECK_DIM = 256
    cfg.MODEL.LT.MULTILABEL.DROPOUT = 0.5
    # Initialisation of the neck's FC: "pytorch" (nn.Linear's default) or "kaiming_fan_out"
    # (the DB-loss project: kaiming-normal weights, fan-out mode, bias 0).
    cfg.MODEL.LT.MULTILABEL.NECK_INIT = "pytorch"

    cfg.INPUT.LT.MULTILABEL = CN()
    # Multi-label classification input: images are resized to IMAGE_SIZE x IMAGE_SIZE without
    # keeping the aspect ratio (DB-loss recipe: 224).
    cfg.INPUT.LT.MULTILABEL.IMAGE_SIZE = 224
    # Training crop before the resize: width and height drawn in [CROP_MIN_SIZE, 1] of the image
    # (DB-loss recipe: 0.8); 1.0 disables it.
    cfg.INPUT.LT.MULTILABEL.CROP_MIN_SIZE = 0.8
    # Training photometric distortion: brightness, contrast and saturation in [0.5, 1.5], each
    # applied with probability 0.5.
    cfg.INPUT.LT.MULTILABEL.PHOTOMETRIC = True


def add_lt_data_config(cfg):
    cfg.DATALOADER.LT = CN()
    # Rounding of repeat factors in RepeatFactorTrainingSampler: "stochastic" (detectron2:
    # floor(r) + 1[U < frac(r)] per epoch) or "ceil" (mmdetection's ClassBalancedDataset:
    # ceil(r) copies, as the mmdetection-based published results used).
    cfg.DATALOADER.LT.REPEAT_ROUNDING = "stochastic"
    # ClassAwareSampler: consecutive images drawn from each drawn class (cRT / LWS: 1; the
    # DB-loss multi-label recipe: 3).
    cfg.DATALOADER.LT.CLASS_AWARE_SAMPLES_PER_CLASS = 1
    # Images per process in one inference batch of MultiLabelClassifier (detectors keep
    # detectron2's one image per batch).
    cfg.DATALOADER.LT.MULTILABEL_TEST_BATCH = 32


def add_lt_input_config(cfg):
    cfg.INPUT.LT = CN()
    cfg.INPUT.LT.LSJ = CN()
    # Large-scale jitter for training (BACL's representation stage): resize to a random scale in
    # [MIN_SCALE, MAX_SCALE] of IMAGE_SIZE, crop / pad to IMAGE_SIZE x IMAGE_SIZE, flip.
    # Replaces INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN when on. Needs segmentation annotations.
    cfg.INPUT.LT.LSJ.ENABLED = False
    cfg.INPUT.LT.LSJ.IMAGE_SIZE = 1280
    cfg.INPUT.LT.LSJ.MIN_SCALE = 0.8
    cfg.INPUT.LT.LSJ.MAX_SCALE = 1.25
    cfg.INPUT.LT.COPY_PASTE = CN()
    # Simple copy-paste on top of large-scale jitter: objects of a random other training image
    # are pasted over each image (at most MAX_NUM_PASTED; BACL: 100).
    cfg.INPUT.LT.COPY_PASTE.ENABLED = False
    cfg.INPUT.LT.COPY_PASTE.MAX_NUM_PASTED = 100


def add_detectron2_main_keys(cfg):
    """detectron2 main's federated-loss keys, on a detectron2 (0.6) that lacks them.

    Same names, meanings and defaults as main's config/defaults.py, so one config works on both.
    """
    if "FED_LOSS_FREQ_WEIGHT_POWER" not in cfg.MODEL.ROI_BOX_HEAD:
        # Federated loss: negatives are sampled with weight image_count ** power.
        cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
    if "FED_LOSS_NUM_CLASSES" not in cfg.MODEL.ROI_BOX_HEAD:
        # Federated loss: number of classes (present + sampled) that get a loss per batch.
        cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50


def is_multilabel(cfg):
    """Whether ``cfg`` builds lt_d2's multi-label image classifier (not a detector)."""
    return cfg.MODEL.META_ARCHITECTURE == "MultiLabelClassifier"


def add_lt_test_config(cfg):
    cfg.TEST.LT = CN()
    # LVIS evaluation backend: "fast" (lt_d2's vectorised re-implementation, the same numbers as
    # lvis-api) or "lvis-api" (the official, pure-Python reference).
    cfg.TEST.LT.LVIS_BACKEND = "fast"
    # Also report Fixed AP (Dave et al. 2021): no per-image cap, the top FIXED_AP_TOPK detections
    # of each class over the whole dataset. Needs a model that outputs more than 300 per image
    # (e.g. TEST.DETECTIONS_PER_IMAGE 10000, MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0001).
    cfg.TEST.LT.FIXED_AP = False
    cfg.TEST.LT.FIXED_AP_TOPK = 10000
    # Write the long-tail report (per-class AP joined with training image counts, AP per
    # frequency group, PNG plot of AP against training frequency) after every evaluation.
    cfg.TEST.LT.REPORT = True
    # Post-hoc score calibration at inference (lt_d2/modeling/calibration.py): foreground scores
    # reweighed per class by the training counts and renormalised with the background score,
    # before the score threshold, NMS and the per-image cap. Training is unchanged.
    cfg.TEST.LT.CALIBRATION = CN()
    # "none", "norcal" (scores * N_c^-GAMMA, Pan et al. 2021) or "logit_adjust" (logits minus
    # TAU * log(N_c / N), Menon et al. 2021). Needs a loss that declares
    # scores_have_background and the class statistics of DATASETS.TRAIN.
    cfg.TEST.LT.CALIBRATION.METHOD = "none"
    # NorCal's exponent: lt_d2's starting value, not a paper's (the official code sets it per
    # model); tune it with tools/tune_calibration.py.
    cfg.TEST.LT.CALIBRATION.GAMMA = 0.6
    # Logit adjustment's temperature.
    cfg.TEST.LT.CALIBRATION.TAU = 1.0
    # What N_c counts: "image" (training images with class c, NorCal's official code) or
    # "instance" (training instances of class c).
    cfg.TEST.LT.CALIBRATION.COUNT = "image"


def model_num_classes(cfg):
    """(number of classes, the key that sets it) of the model ``cfg`` builds."""
    if is_multilabel(cfg):
        return cfg.MODEL.LT.MULTILABEL.NUM_CLASSES, "MODEL.LT.MULTILABEL.NUM_CLASSES"
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES, "MODEL.ROI_HEADS.NUM_CLASSES"


def add_lt_config(cfg):
    """Add every lt_d2 key, with its default, to ``cfg`` (idempotent)."""
    if "TINY_NET" not in cfg.MODEL:
        add_tiny_net_config(cfg)
    if "LT" not in cfg.MODEL:
        add_lt_model_config(cfg)
    if "LT" not in cfg.DATALOADER:
        add_lt_data_config(cfg)
    if "LT" not in cfg.INPUT:
        add_lt_input_config(cfg)
    if "LT" not in cfg.TEST:
        add_lt_test_config(cfg)
    if "MULTILABEL" not in cfg.MODEL.LT:
        add_lt_multilabel_config(cfg)
    add_detectron2_main_keys(cfg)
    return cfg
