# Copyright (c) lt_d2 contributors.
"""The methods of the synthetic leaderboard: every one trained with the tiny Faster R-CNN of
``configs/Synthetic-LT/Base-Synthetic-LT.yaml`` and the same budget (1,100 iterations of 8 images
for an end-to-end run; decoupled methods add a 400-iteration stage two to the softmax CE model).
"""
from dataclasses import dataclass

from ..reproduce import Step

SYNTHETIC = "configs/Synthetic-LT/"
STAGE_ONE = Step("train", config=SYNTHETIC + "faster_rcnn_tiny_ce.yaml")
METRICS = ("bbox/AP", "bbox/APr", "bbox/APc", "bbox/APf")


@dataclass(frozen=True)
class Method:
    name: str  # --methods key and the table's row
    description: str
    pipeline: tuple  # reproduce Steps: train / surgery
    eval_opts: tuple = ()  # KEY VALUE of a separate --eval-only of the final model (post-hoc)

    @property
    def kind(self):
        if self.eval_opts:
            return "post-hoc"
        return "decoupled" if len(self.pipeline) > 1 else "end-to-end"


def _end_to_end(name, config, description):
    return Method(name, description, (Step("train", config=SYNTHETIC + config),))


def _decoupled(name, surgery, config, description):
    return Method(name, description, (STAGE_ONE, Step("surgery", method=surgery),
                                      Step("train", config=SYNTHETIC + "decoupled/" + config)))


METHODS = {m.name: m for m in (
    _end_to_end("softmax_ce", "faster_rcnn_tiny_ce.yaml", "softmax cross-entropy (baseline)"),
    _end_to_end("sigmoid_ce", "faster_rcnn_tiny_sigmoid_ce.yaml", "sigmoid cross-entropy"),
    _end_to_end("rfs", "faster_rcnn_tiny_rfs.yaml", "softmax CE + repeat-factor sampling"),
    _end_to_end("eql", "faster_rcnn_tiny_eql.yaml", "equalization loss"),
    _end_to_end("eqlv2", "faster_rcnn_tiny_eqlv2.yaml", "equalization loss v2"),
    _end_to_end("federated", "faster_rcnn_tiny_fed.yaml", "federated loss"),
    _end_to_end("seesaw", "faster_rcnn_tiny_seesaw.yaml", "Seesaw loss"),
    _end_to_end("acsl", "faster_rcnn_tiny_acsl.yaml", "adaptive class suppression loss"),
    _end_to_end("db", "faster_rcnn_tiny_db.yaml", "distribution-balanced loss"),
    _end_to_end("fcbl", "faster_rcnn_tiny_fcbl.yaml", "FCBL, end to end"),
    _decoupled("crt", "remove", "crt_faster_rcnn_tiny.yaml", "cRT: new classifier, class-aware"),
    _decoupled("lws", "reset", "lws_faster_rcnn_tiny.yaml", "LWS: learned weight scaling"),
    _decoupled("bags", "remove", "bags_faster_rcnn_tiny.yaml", "BAGS: balanced group softmax"),
    _decoupled("acsl_tunefc", "reset", "acsl_tunefc_faster_rcnn_tiny.yaml",
               "ACSL fine-tuning the classifier"),
    _decoupled("bacl", "reset", "bacl_classifier_faster_rcnn_tiny.yaml",
               "BACL: FCBL + feature hallucination"),
    Method("softmax_ce_norcal", "softmax CE + NorCal (post-hoc, no training)", (STAGE_ONE,),
           eval_opts=("TEST.LT.CALIBRATION.METHOD", "norcal")),
)}


def select_methods(names=None):
    """The methods called ``names`` (all when None), in the leaderboard's order."""
    if not names:
        return list(METHODS.values())
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)}; choose from: "
                         f"{', '.join(METHODS)}.")
    return [m for m in METHODS.values() if m.name in names]
