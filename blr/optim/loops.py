"""Callbacks that put the posterior mean into the model where a training framework evaluates or
saves it, for the optimizers of :mod:`blr.optim` trained with ``draw_ahead=True`` (the weights
hold a posterior draw between steps, so that loops which never call ``sampled_params`` train at
draws; docs/loops.md).

- :func:`lightning_callback`: a ``lightning.pytorch.Callback`` that evaluates (validation, test,
  predict) at the mean and writes the mean into the checkpoint's ``state_dict``.
- :func:`hf_callback`: a ``transformers.TrainerCallback`` that switches to the mean after a step
  on which the Trainer is about to evaluate or save, and back to the held draw before the next
  step.

Neither framework is a dependency: each is imported when its callback is made.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["hf_callback", "lightning_callback", "unwrap"]


def unwrap(optimizer: Any) -> Any:
    """The optimizer inside framework wrappers (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``: their ``.optimizer``).

    Example:
        >>> import torch
        >>> from blr.optim import IVON
        >>> from blr.optim.loops import unwrap
        >>> opt = IVON(torch.nn.Linear(2, 1).parameters(), lr=0.1, ess=10)
        >>> unwrap(opt) is opt
        True
    """
    seen = 0
    while not hasattr(optimizer, "mean_params") and hasattr(optimizer, "optimizer"):
        optimizer, seen = optimizer.optimizer, seen + 1
        if seen > 8:
            break
    return optimizer


class _AtTheMean:
    """The mean in the weights between :meth:`enter` and :meth:`leave` (idempotent), for every
    optimizer given that has ``mean_params`` (others are left alone)."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    def enter(self, optimizers: list[Any]) -> None:
        if self._stack is not None:
            return
        stack = contextlib.ExitStack()
        for opt in optimizers:
            opt = unwrap(opt)
            if hasattr(opt, "mean_params"):
                stack.enter_context(opt.mean_params())
        self._stack = stack

    def leave(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def lightning_callback() -> Any:
    """A ``lightning.pytorch.Callback``: validation, test and prediction run at the posterior
    mean of every :mod:`blr.optim` optimizer of the trainer (``mean_params()``; the held draw
    goes back afterwards, exactly), and a checkpoint's ``state_dict`` holds the mean, so that
    the saved model is the posterior mean (resuming restores the held draw from the optimizer's
    state).

    Example (``lightning.pytorch.Trainer(callbacks=[lightning_callback()])``):
        >>> from blr.optim.loops import lightning_callback
        >>> type(lightning_callback()).__name__
        'MeanForEvaluation'
    """
    import lightning.pytorch as pl

    class MeanForEvaluation(pl.Callback):
        """Evaluate and save at the posterior mean (see :func:`lightning_callback`)."""

        def __init__(self) -> None:
            self._mean = _AtTheMean()

        def _enter(self, trainer: Any, *_: Any) -> None:
            self._mean.enter(list(trainer.optimizers))

        def _leave(self, *_: Any) -> None:
            self._mean.leave()

        on_validation_start = on_test_start = on_predict_start = _enter
        on_validation_end = on_test_end = on_predict_end = _leave

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
            state = checkpoint.get("state_dict")
            if state is None:
                return
            at_mean = self._mean._stack is not None
            if not at_mean:
                self._mean.enter(list(trainer.optimizers))
            try:
                with torch.no_grad():
                    for name, value in pl_module.state_dict().items():
                        if name in state:
                            state[name] = value.detach().clone()
            finally:
                if not at_mean:
                    self._mean.leave()

    return MeanForEvaluation()


def hf_callback() -> Any:
    """A ``transformers.TrainerCallback``: after an optimizer step on which the Trainer is about
    to evaluate or save (``control.should_evaluate`` / ``should_save``), the weights hold the
    posterior mean of the Trainer's :mod:`blr.optim` optimizer, so evaluation and the saved
    model (safetensors by default) are the mean; the held draw is back before the next step
    (and at the end of training).

    Example (``transformers.Trainer(..., callbacks=[hf_callback()])``):
        >>> from blr.optim.loops import hf_callback
        >>> type(hf_callback()).__name__
        'MeanForEvaluation'
    """
    import transformers

    class MeanForEvaluation(transformers.TrainerCallback):
        """Evaluate and save at the posterior mean (see :func:`hf_callback`)."""

        def __init__(self) -> None:
            self._mean = _AtTheMean()

        def _maybe_enter(self, control: Any, kwargs: dict) -> None:
            opt = kwargs.get("optimizer")
            if opt is not None and (control.should_evaluate or control.should_save):
                self._mean.enter([opt])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._maybe_enter(control, kwargs)

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._maybe_enter(control, kwargs)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._mean.leave()

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._mean.leave()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._mean.leave()

    return MeanForEvaluation()
