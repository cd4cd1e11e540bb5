# Copyright (c) lt_d2 contributors.
"""ROI heads whose box predictor is lt_d2's ``LTFastRCNNOutputLayers``.

Select them with ``MODEL.ROI_HEADS.NAME: LTROIHeads`` (or ``LTCascadeROIHeads``). With every
long-tail option off they are numerically identical to detectron2's ``StandardROIHeads`` /
``CascadeROIHeads``: same parameters and checkpoint keys, same losses and outputs.

Decoupled stage two: ``mask_loss_on`` (:class:`MaskLossSwitch`, here) and ``box_reg_loss_on``
(on each box predictor) are set False by :func:`lt_d2.engine.freeze.skip_frozen_losses` for heads
whose losses reach no trainable parameter; training then neither runs nor logs them.

Export: ``LTROIHeads`` scripts like detectron2's ``StandardROIHeads``
(``detectron2.export.scripting_with_instances``) and traces; BACL's hallucinated samples reach
the predictor as an explicit argument of ``losses()``, not as module state.
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances

from .box_predictor import replace_box_predictor, require_lt_config
from .hallucination import HALLUCINATOR_REGISTRY, JITTER_COPIES, jitter_boxes


class MaskLossSwitch:
    """Mixed into lt_d2's ROI heads: they hold ``mask_loss_on`` (True when built), and with it
    False training skips the mask head's forward and loss (stage two with a frozen mask head;
    :func:`lt_d2.engine.freeze.skip_frozen_losses` switches it). Inference still predicts masks.
    """

    mask_loss_on: bool


@ROI_HEADS_REGISTRY.register()
class LTROIHeads(MaskLossSwitch, StandardROIHeads):
    """``StandardROIHeads`` with lt_d2's box predictor and, optionally, BACL's hallucinator.

    With ``box_hallucinator`` (``MODEL.LT.HALLUCINATION.ENABLED``), every training step
    (1) pools box-head features of ``JITTER_COPIES`` jittered copies of each ground-truth box
    and folds them into per-class statistics, (2) draws classes by 1 - accuracy (the loss's
    ``per_class_accuracy``, FCBL's confusion-matrix diagonal) and samples features for them, and
    (3) passes those through the classifier into the classification loss, beside the RoIs. Only
    the classifier sees their gradient. ``mask_loss_on``: see :class:`MaskLossSwitch`.
    """

    # constants to TorchScript, which then compiles only the branches of the heads that exist
    # (detectron2.export annotates StandardROIHeads so; a subclass needs its own annotations)
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, box_hallucinator=None, **kwargs):
        super().__init__(**kwargs)
        cls_loss = self.box_predictor.cls_loss
        if box_hallucinator is not None and not cls_loss.reports_per_class_accuracy:
            raise ValueError(f"MODEL.LT.HALLUCINATION draws classes by their accuracy, which "
                             f"{type(cls_loss).__name__} does not keep: set MODEL.LT.CLS_LOSS "
                             "FCBLLoss (its confusion matrix).")
        self.box_hallucinator = box_hallucinator
        self.mask_loss_on = True

    @classmethod
    def from_config(cls, cfg, input_shape):
        require_lt_config(cfg, "LTROIHeads")
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.LT.HALLUCINATION.ENABLED:
            ret["box_hallucinator"] = HALLUCINATOR_REGISTRY.get(cfg.MODEL.LT.HALLUCINATION.NAME)(
                cfg, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                feature_dim=ret["box_head"].output_shape.channels)
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = replace_box_predictor(
            cfg, ret["box_predictor"], ret["box_head"].output_shape
        )
        return ret

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """``StandardROIHeads.forward``, plus the hallucinated samples and the skipped mask loss
        in training. No ``super()``: TorchScript compiles this method."""
        del images
        if self.training:
            assert targets, "'targets' argument is required during training"
            extra = None
            if self.box_hallucinator is not None:  # before sampling: the RNG order of BACL
                extra = self.hallucinated_logits(features, targets)
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._box_losses(features, proposals, extra)
            if self.mask_loss_on:
                losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, {}

    def _box_losses(self, features, proposals, extra_classification=None):
        """The training branch of ``StandardROIHeads._forward_box``, with
        ``extra_classification`` ((logits, labels) or None) passed to the predictor's losses."""
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        del box_features
        losses = self.box_predictor.losses(predictions, proposals, extra_classification)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                    proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
        return losses

    def hallucinated_logits(self, features, targets):
        """Update the hallucinator with jittered ground truth; return classifier logits and
        labels of the hallucinated features."""
        with torch.no_grad():
            feature_maps = [features[f] for f in self.box_in_features]
            boxes = [Boxes(jitter_boxes(t.gt_boxes.tensor, t.image_size)) for t in targets]
            pooled = self.box_head(self.box_pooler(feature_maps, boxes))
            labels = torch.cat([t.gt_classes.repeat_interleave(JITTER_COPIES) for t in targets])
            self.box_hallucinator.update(pooled.flatten(1), labels)
            accuracy = self.box_predictor.cls_loss.per_class_accuracy()
            classes = self.box_hallucinator.sample_classes(accuracy)
            fake, fake_labels = self.box_hallucinator.hallucinate(classes)
        return self.box_predictor.cls_score(fake), fake_labels


@ROI_HEADS_REGISTRY.register()
class LTCascadeROIHeads(MaskLossSwitch, CascadeROIHeads):
    """``CascadeROIHeads`` with lt_d2's box predictor in every stage, per-stage loss weights and
    a choice of how the stages' classifications are combined at test time.

    Args:
        stage_loss_weights (list[float]): one weight per stage, multiplying every loss of that
            stage's predictor (``loss_*_stage{k}``); empty: weight 1 each (detectron2).
        test_score (str): "mean_probs" (detectron2: the mean over stages of each stage
            predictor's scores) or "mean_logits" (the ACSL official code, i.e. mmdetection's
            Cascade R-CNN: the last stage's loss turns the stage-averaged logits into scores).
            Boxes are the last stage's in both. The last stage's predictor calibrates the
            combined scores (``TEST.LT.CALIBRATION``).
        scale_feature_gradient (bool): True (detectron2): the gradient each stage sends into the
            pooled features is scaled by 1 / #stages; False: unscaled (mmdetection).
        Other arguments: those of ``CascadeROIHeads``.

    ``mask_loss_on``: see :class:`MaskLossSwitch`.
    """

    TEST_SCORES = ("mean_probs", "mean_logits")

    @configurable
    def __init__(self, *, stage_loss_weights=(), test_score="mean_probs",
                 scale_feature_gradient=True, **kwargs):
        super().__init__(**kwargs)
        if len(stage_loss_weights) not in (0, self.num_cascade_stages):
            raise ValueError(
                f"MODEL.LT.CASCADE.STAGE_LOSS_WEIGHTS has {len(stage_loss_weights)} weights; it "
                f"needs one per cascade stage ({self.num_cascade_stages}, the length of "
                "MODEL.ROI_BOX_CASCADE_HEAD.IOUS), or [] for weight 1 each.")
        if test_score not in self.TEST_SCORES:
            raise ValueError(f"Unknown MODEL.LT.CASCADE.TEST_SCORE={test_score!r}; use one of "
                             f"{', '.join(map(repr, self.TEST_SCORES))}.")
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.test_score = test_score
        self.scale_feature_gradient = scale_feature_gradient
        self.mask_loss_on = True

    @classmethod
    def from_config(cls, cfg, input_shape):
        require_lt_config(cfg, "LTCascadeROIHeads")
        if cfg.MODEL.LT.HALLUCINATION.ENABLED:
            raise ValueError("MODEL.LT.HALLUCINATION is implemented for LTROIHeads (Faster / Mask "
                             "R-CNN, as BACL), not for LTCascadeROIHeads.")
        ret = super().from_config(cfg, input_shape)
        ret["stage_loss_weights"] = list(cfg.MODEL.LT.CASCADE.STAGE_LOSS_WEIGHTS)
        ret["test_score"] = cfg.MODEL.LT.CASCADE.TEST_SCORE
        ret["scale_feature_gradient"] = cfg.MODEL.LT.CASCADE.SCALE_FEATURE_GRADIENT
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            replace_box_predictor(cfg, predictor, head.output_shape)
            for predictor, head in zip(ret["box_predictors"], ret["box_heads"])
        ]
        return ret

    def _forward_box(self, features, proposals, targets=None):
        if self.training:
            losses = super()._forward_box(features, proposals, targets)
            if not self.stage_loss_weights:  # no multiplication: bit-identical to detectron2
                return losses
            # detectron2 names every loss of stage k "<name>_stage{k}"
            return {name: loss * self.stage_loss_weights[int(name.rsplit("_stage", 1)[1])]
                    for name, loss in losses.items()}
        if self.test_score == "mean_probs" and not self.box_predictor[-1].calibrated:
            return super()._forward_box(features, proposals)
        return self._inference_combined(features, proposals)

    def _forward_mask(self, features, instances):
        if self.training and not self.mask_loss_on:
            return {}
        return super()._forward_mask(features, instances)

    def _run_stage(self, features, proposals, stage):
        if self.scale_feature_gradient:
            return super()._run_stage(features, proposals, stage)
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        return self.box_predictor[stage](self.box_head[stage](box_features))

    def _inference_combined(self, features, proposals):
        """detectron2's cascade inference, with the stages' scores combined as ``test_score``
        says and then calibrated by the last stage's predictor.

        The stage loop is detectron2's: it combines the scores inside
        ``CascadeROIHeads._forward_box``, past the point where the logits are still at hand and
        where the combined scores could be calibrated.
        """
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stages, boxes = [], None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            stages.append((self.box_predictor[k], predictions, proposals))
        predictor = self.box_predictor[-1]
        if self.test_score == "mean_logits":
            logits = sum(p[0] for _, p, _ in stages) / self.num_cascade_stages
            scores = predictor.predict_probs((logits, predictions[1]), proposals)
        else:  # detectron2's arithmetic
            per_stage = [head.predict_probs(p, props) for head, p, props in stages]
            scores = [sum(list(per_image)) * (1.0 / self.num_cascade_stages)
                      for per_image in zip(*per_stage)]
        scores = predictor.calibrate_scores(scores)
        pred_instances, _ = fast_rcnn_inference(
            boxes, scores, image_sizes, predictor.test_score_thresh, predictor.test_nms_thresh,
            predictor.test_topk_per_image)
        return pred_instances
