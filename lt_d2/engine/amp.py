# Copyright (c) lt_d2 contributors.
"""``SOLVER.AMP.ENABLED`` on the CPU: detectron2's ``AMPTrainer`` is CUDA-only (it asserts CUDA
and autocasts with ``torch.cuda.amp``), so a CPU run trains under bfloat16 autocast instead.

bfloat16 has float32's exponent range, so gradients do not underflow and no GradScaler is
needed; the losses, the hallucinator and the classifiers' norms run in float32 whatever autocast
does (see ``lt_d2.modeling.losses.base``). CUDA runs keep detectron2's float16 ``AMPTrainer``.
"""
import logging
import time

import torch
from detectron2.engine import AMPTrainer

logger = logging.getLogger(__name__)


class CPUAutocastStep:
    """A training step under CPU bfloat16 autocast with a plain (unscaled) backward and
    optimizer step, mixed into detectron2's ``AMPTrainer`` (or a subclass of it)."""

    precision = torch.bfloat16

    def run_step(self):
        assert self.model.training, "[CPUAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        # detectron2 main can zero the gradients before the forward; 0.6 always after
        zero_first = getattr(self, "zero_grad_before_forward", False)
        if zero_first:
            self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not zero_first:
            self.optimizer.zero_grad()
        losses.backward()
        if hasattr(self, "after_backward"):  # detectron2 main's hook point
            self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class CPUAMPTrainer(CPUAutocastStep, AMPTrainer):
    """detectron2's ``AMPTrainer`` whose step runs under CPU bfloat16 autocast. Its state
    (``grad_scaler``, a disabled scaler on the CPU) is that of ``AMPTrainer``, so checkpoints
    move between the two."""


def use_cpu_amp(trainer, device):
    """Give the inner trainer that ``DefaultTrainer`` built for ``SOLVER.AMP.ENABLED`` (an
    ``AMPTrainer``, or a subclass) the CPU autocast step when the model runs on the CPU. The
    object is kept (only its class changes), so everything that refers to it still does."""
    if device.startswith("cuda") or not isinstance(trainer, AMPTrainer):
        return trainer
    if not isinstance(trainer, CPUAutocastStep):
        base = type(trainer)
        trainer.__class__ = CPUAMPTrainer if base is AMPTrainer else type(
            f"CPUAMP{base.__name__}", (CPUAutocastStep, base), {})
    logger.info("SOLVER.AMP.ENABLED on MODEL.DEVICE %s: training under CPU bfloat16 autocast "
                "(losses and their state in float32).", device)
    return trainer
