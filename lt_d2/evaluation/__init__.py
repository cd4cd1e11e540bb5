# Copyright (c) lt_d2 contributors.
from .build import build_lt_evaluator
from .longtail_report import LongTailReport
from .multilabel import MultiLabelEvaluator, multilabel_scores, stepwise_average_precision
