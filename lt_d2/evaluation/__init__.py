# Copyright (c) lt_d2 contributors.
from .build import LongTailReport, build_lt_evaluator
from .multilabel import MultiLabelEvaluator, average_precision, multilabel_scores
