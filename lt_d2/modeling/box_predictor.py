# Copyright (c) lt_d2 contributors.
"""The box predictor of lt_d2's ROI heads."""
import torch
from detectron2.modeling.roi_heads import FastRCNNOutputLayers


class LTFastRCNNOutputLayers(FastRCNNOutputLayers):
    """detectron2's ``FastRCNNOutputLayers``, the predictor that lt_d2's long-tail methods
    extend (classification loss, classifier layer, hallucinated features).

    It takes the same arguments, keeps the same parameters (``cls_score``, ``bbox_pred``) and,
    with every long-tail option off, computes exactly what detectron2's predictor computes.
    """


def replace_box_predictor(cfg, stock_predictor, input_shape):
    """Build an ``LTFastRCNNOutputLayers`` in place of detectron2's ``stock_predictor``.

    The new predictor is built without consuming the global RNG and takes the stock predictor's
    weights wherever the shapes agree, so a model with lt_d2's ROI heads is initialised exactly
    like detectron2's (same parameters, same RNG stream for the modules built after it).
    """
    with torch.random.fork_rng(devices=[]):
        predictor = LTFastRCNNOutputLayers(
            cfg, input_shape, box2box_transform=stock_predictor.box2box_transform
        )
    stock_state = stock_predictor.state_dict()
    own_state = predictor.state_dict()
    matching = {k: v for k, v in stock_state.items() if k in own_state and own_state[k].shape == v.shape}
    predictor.load_state_dict(matching, strict=False)
    return predictor
