r"""Predictive distributions by Bayesian model averaging over posterior draws.

For draws θ_s ~ q (s = 1..S) of the network's weights:

.. math::
    p(y\mid x) \approx \frac1S\sum_s p(y\mid x, \theta_s)\quad\text{(classification)},\qquad
    \mathbb E[y] \approx \frac1S\sum_s \mu_s(x),\quad
    \operatorname{Var}[y] \approx \underbrace{\frac1S\sum_s \sigma^2_s(x)}_{\text{aleatoric}}
    + \underbrace{\frac1S\sum_s (\mu_s(x) - \bar\mu(x))^2}_{\text{epistemic}}
    \quad\text{(regression)}.

A *posterior* here is anything with a ``sampled_params()`` context manager that puts a draw into
the model's parameters and restores them on exit — every optimizer of :mod:`blr.optim`, or a
:class:`blr.ParameterPosterior` for a BLR posterior (any :mod:`expfam` family over the flattened
parameters). ``n_samples=0`` predicts at the posterior mean (``mean_params()`` when the posterior
has it, else the parameters as they are). Everything runs under ``torch.no_grad()``, in chunks
of ``batch_size`` inputs, and leaves the parameters exactly as it found them.

Example:
    >>> import torch
    >>> from blr.optim import IVON
    >>> model = torch.nn.Linear(3, 4)
    >>> opt = IVON(model.parameters(), lr=0.1, ess=100, seed=0)
    >>> pred = predict_classification(model, opt, torch.randn(5, 3), n_samples=8)
    >>> pred.probs.shape, bool(torch.allclose(pred.probs.sum(-1), torch.ones(5)))
    (torch.Size([5, 4]), True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "ClassificationPredictive",
    "Posterior",
    "RegressionPredictive",
    "predict_classification",
    "predict_regression",
]


class Posterior(Protocol):
    """What the predictive functions need: a context manager that writes a posterior draw into
    the model's parameters and restores them on exit (every optimizer of :mod:`blr.optim`, a
    :class:`blr.ParameterPosterior`).

    Example:
        >>> import torch
        >>> from blr.optim import IVON
        >>> model = torch.nn.Linear(2, 1)
        >>> posterior: Posterior = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
        >>> with posterior.sampled_params():
        ...     pass   # model's parameters hold a draw here
    """

    def sampled_params(self) -> contextlib.AbstractContextManager:
        """A context manager: on entry a posterior draw is written into the model's parameters,
        on exit the parameters are restored.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(2, 1)
            >>> w = model.weight.detach().clone()
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> with opt.sampled_params():
            ...     drawn = not torch.equal(model.weight, w)
            >>> drawn, torch.equal(model.weight, w)
            (True, True)
        """
        ...


@dataclass(frozen=True)
class ClassificationPredictive:
    """The Bayesian-model-average predictive of a classifier.

    Attributes:
        log_probs: log of the averaged class probabilities, ``(n, K)`` (log-sum-exp over draws:
            exact even where a probability underflows).
        samples: per-draw log-probabilities ``(S, n, K)`` when asked for, else None.

    Example:
        >>> import torch
        >>> ClassificationPredictive(torch.tensor([[0.25, 0.75]]).log()).probs
        tensor([[0.2500, 0.7500]])
    """

    log_probs: Tensor
    samples: Tensor | None = None

    @property
    def probs(self) -> Tensor:
        """(1/S)Σ_s p(y | x, θ_s), ``(n, K)``.

        Example:
            >>> import torch
            >>> ClassificationPredictive(torch.tensor([[0.5, 0.5]]).log()).probs
            tensor([[0.5000, 0.5000]])
        """
        return self.log_probs.exp()


@dataclass(frozen=True)
class RegressionPredictive:
    """Gaussian summary of a regression predictive: mean, aleatoric and epistemic variance.

    Attributes:
        mean: (1/S)Σ_s μ_s(x).
        aleatoric: (1/S)Σ_s σ²_s(x), the noise the model expects.
        epistemic: (1/S)Σ_s (μ_s(x) − mean)², the spread of the draws.
        samples: per-draw means ``(S, ...)`` when asked for, else None.

    Example:
        >>> import torch
        >>> mean, aleatoric, epistemic = torch.ones(1), torch.tensor([0.5]), torch.tensor([0.25])
        >>> pred = RegressionPredictive(mean, aleatoric, epistemic)
        >>> pred.mean, pred.var
        (tensor([1.]), tensor([0.7500]))
    """

    mean: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    samples: Tensor | None = None

    @property
    def var(self) -> Tensor:
        """Total predictive variance, aleatoric + epistemic.

        Example:
            >>> import torch
            >>> RegressionPredictive(torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)).var
            tensor([3.])
        """
        return self.aleatoric + self.epistemic


def _chunks(inputs: Any, batch_size: int | None) -> list[Any]:
    if batch_size is None:
        return [inputs]
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
    if not isinstance(inputs, Tensor):
        raise TypeError("batch_size needs the inputs as one tensor (batch dimension first)")
    return list(inputs.split(int(batch_size)))


def _at_mean(posterior: Any) -> contextlib.AbstractContextManager:
    mean = getattr(posterior, "mean_params", None)
    return mean() if callable(mean) else contextlib.nullcontext()


def _outputs(
    model: Callable[[Any], Tensor],
    posterior: Any,
    inputs: Any,
    n_samples: int,
    batch_size: int | None,
) -> Iterator[Tensor]:
    """Model outputs at each draw (or at the mean when ``n_samples == 0``), inputs chunked."""
    if int(n_samples) != n_samples or n_samples < 0:
        raise ValueError(f"n_samples must be an integer ≥ 0, got {n_samples}")
    if n_samples > 0 and not callable(getattr(posterior, "sampled_params", None)):
        raise TypeError(
            "posterior must have a sampled_params() context manager (a blr.optim optimizer or "
            f"a blr.ParameterPosterior), got {type(posterior).__name__}"
        )
    chunks = _chunks(inputs, batch_size)
    with torch.no_grad():
        if n_samples == 0:
            with _at_mean(posterior):
                yield torch.cat([model(c) for c in chunks])
            return
        for _ in range(int(n_samples)):
            with posterior.sampled_params():
                yield torch.cat([model(c) for c in chunks])


def predict_classification(
    model: Callable[[Any], Tensor],
    posterior: Any,
    inputs: Any,
    *,
    n_samples: int = 32,
    likelihood: Literal["categorical", "bernoulli"] = "categorical",
    batch_size: int | None = None,
    keep_samples: bool = False,
) -> ClassificationPredictive:
    r"""p(y | x) ≈ (1/S)Σ_s p(y | x, θ_s) for a classifier whose outputs are logits.

    Args:
        model: maps ``inputs`` (or a chunk of them) to logits, ``(n, K)`` for ``"categorical"``
            (softmax) or ``(n,)``/``(n, 1)`` for ``"bernoulli"`` (sigmoid; returned as two
            classes, column 1 = y = 1).
        posterior: a :class:`Posterior` (any :mod:`blr.optim` optimizer, a
            :class:`blr.ParameterPosterior`); with ``n_samples=0`` anything (its ``mean_params()``
            is used when it has one).
        inputs: the model's input (a tensor with the batch first when ``batch_size`` is set).
        n_samples: S; 0 predicts at the mean.
        likelihood: ``"categorical"`` or ``"bernoulli"``.
        batch_size: evaluate the inputs in chunks of this many (None: all at once).
        keep_samples: also return the per-draw log-probabilities.

    Returns:
        A :class:`ClassificationPredictive`.

    Example:
        >>> import torch, expfam
        >>> model = torch.nn.Linear(2, 3)
        >>> fam = expfam.DiagGaussian()
        >>> from blr.posterior import ParameterPosterior
        >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(9), torch.ones(9)), model,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> pred = predict_classification(model, q, torch.randn(5, 2), n_samples=8)
        >>> pred.probs.shape, bool(torch.allclose(pred.probs.sum(-1), torch.ones(5)))
        (torch.Size([5, 3]), True)
    """
    if likelihood not in ("categorical", "bernoulli"):
        raise ValueError(f"likelihood must be 'categorical' or 'bernoulli', got {likelihood!r}")
    per_draw = []
    for out in _outputs(model, posterior, inputs, n_samples, batch_size):
        if likelihood == "bernoulli":
            f = out.reshape(out.shape[0], -1)
            if f.shape[1] != 1:
                raise ValueError(
                    f"bernoulli outputs must be (n,) or (n, 1), got {tuple(out.shape)}"
                )
            f = f[:, 0]
            per_draw.append(
                torch.stack([-nn.functional.softplus(f), -nn.functional.softplus(-f)], -1)
            )
        else:
            if out.ndim != 2:
                raise ValueError(
                    f"categorical outputs must be (n, K) logits, got {tuple(out.shape)}"
                )
            per_draw.append(torch.log_softmax(out, dim=-1))
    stacked = torch.stack(per_draw)
    log_probs = torch.logsumexp(stacked, dim=0) - math.log(stacked.shape[0])
    return ClassificationPredictive(log_probs, stacked if keep_samples else None)


def predict_regression(
    model: Callable[[Any], Tensor],
    posterior: Any,
    inputs: Any,
    *,
    n_samples: int = 32,
    noise_var: float | Tensor | None = None,
    batch_size: int | None = None,
    keep_samples: bool = False,
) -> RegressionPredictive:
    r"""Predictive mean with the aleatoric/epistemic split (module docstring).

    Args:
        model: maps ``inputs`` to the predicted mean μ(x), or — when ``noise_var`` is None — to
            ``(n, 2)`` outputs (μ(x), log σ²(x)) of a heteroscedastic model.
        posterior: as in :func:`predict_classification`.
        inputs: the model's input.
        n_samples: S; 0 predicts at the mean (epistemic variance 0).
        noise_var: σ², the homoscedastic noise variance (a number or a tensor broadcastable to
            the outputs); None for a model that predicts log σ²(x) in its second column.
        batch_size: evaluate the inputs in chunks of this many.
        keep_samples: also return the per-draw means.

    Returns:
        A :class:`RegressionPredictive`.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1)
        >>> pred = predict_regression(model, None, torch.ones(4, 1), n_samples=0, noise_var=0.5)
        >>> pred.var.flatten().tolist()   # at the mean: aleatoric only
        [0.5, 0.5, 0.5, 0.5]
    """
    means, noises = [], []
    for out in _outputs(model, posterior, inputs, n_samples, batch_size):
        if noise_var is None:
            if out.ndim != 2 or out.shape[1] != 2:
                raise ValueError(
                    "without noise_var the model must output (n, 2) = (mean, log variance), got "
                    f"{tuple(out.shape)}"
                )
            means.append(out[:, 0])
            noises.append(out[:, 1].exp())
        else:
            means.append(out)
            noises.append(torch.as_tensor(noise_var, dtype=out.dtype).expand_as(out))
    mu = torch.stack(means)
    mean = mu.mean(0)
    epistemic = ((mu - mean) ** 2).mean(0)
    aleatoric = torch.stack(noises).mean(0)
    if noise_var is not None and not bool((aleatoric > 0).all()):
        raise ValueError("noise_var must be positive")
    return RegressionPredictive(mean, aleatoric, epistemic, mu if keep_samples else None)
