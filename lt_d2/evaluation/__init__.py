# Copyright (c) lt_d2 contributors.
from .multilabel import MultiLabelEvaluator, average_precision, multilabel_scores
