# Copyright (c) lt_d2 contributors.
"""ROI heads whose box predictor is lt_d2's ``LTFastRCNNOutputLayers``.

Select them with ``MODEL.ROI_HEADS.NAME: LTROIHeads`` (or ``LTCascadeROIHeads``). With every
long-tail option off they are numerically identical to detectron2's ``StandardROIHeads`` /
``CascadeROIHeads``: same parameters and checkpoint keys, same losses and outputs.
"""
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

from .box_predictor import replace_box_predictor


@ROI_HEADS_REGISTRY.register()
class LTROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with lt_d2's box predictor."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = replace_box_predictor(
            cfg, ret["box_predictor"], ret["box_head"].output_shape
        )
        return ret


@ROI_HEADS_REGISTRY.register()
class LTCascadeROIHeads(CascadeROIHeads):
    """``CascadeROIHeads`` with lt_d2's box predictor in every stage."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            replace_box_predictor(cfg, predictor, head.output_shape)
            for predictor, head in zip(ret["box_predictors"], ret["box_heads"])
        ]
        return ret
