"""Sampling-Free training (Chen et al., TIP 2021): plain cross-entropy over every sample.

Three parts that only work together: classification by cross-entropy over all non-ignored
samples (no focal loss, no sampler), a classifier bias matched to the foreground prior
(:func:`optimal_prior_prob`, then ``assigndet.layers.prior_bias``), and a
classification loss rescaled every step to the localisation loss with a learnable factor.
The functions here are what every head shares: sigmoid heads (FCOS, ATSS, PSS) and RPN-like
objectness use :func:`sigmoid_ce_loss`; softmax RoI heads keep ``F.cross_entropy`` and share
:func:`guidance_ratio` or :class:`GuidedLossScaling`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import CfgNode, configurable
from ...utils.comm import all_reduce_mean
from ...utils.events import current_event_storage

GUIDANCE_MODES = ("global", "local")


def _count(value: int | Tensor, name: str) -> int | float:
    """A non-negative count; a tensor holds counts (e.g. one per image) and is summed."""
    if isinstance(value, Tensor):
        if value.numel() and bool((value < 0).any()):
            raise ValueError(f"{name} must be >= 0; got a tensor with negative entries")
        total = value.sum()
        return float(total.double()) if total.is_floating_point() else int(total)
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return value


def optimal_prior_prob(
    num_foreground: int | Tensor,
    num_samples: int | Tensor,
    min_prob: float = 1e-6,
    max_prob: float = 0.5,
) -> float:
    """The initial foreground probability that minimises cross-entropy at the start of training.

    If every one of N binary outputs starts at probability p, of which N^f are positive, the
    loss -N^f log p - (N - N^f) log(1 - p) is minimal at p = N^f / N. N counts binary outputs:
    valid samples x classes for a K-class sigmoid head, valid samples for objectness. Sums run
    over all images of the estimate, not per image; summing over ranks is the caller's job.

    Args:
        num_foreground: N^f, positive binary outputs; an int or a tensor of counts (summed).
        num_samples: N, all non-ignored binary outputs; an int or a tensor of counts (summed).
        min_prob: lower clamp (also the result when there is no positive).
        max_prob: upper clamp.

    Returns:
        N^f / N clamped to ``[min_prob, max_prob]``.
    """
    if not 0.0 < min_prob <= max_prob < 1.0:
        raise ValueError(
            f"optimal_prior_prob: need 0 < min_prob <= max_prob < 1; got {min_prob}, {max_prob}"
        )
    num_fg = _count(num_foreground, "num_foreground")
    num = _count(num_samples, "num_samples")
    if num <= 0:
        raise ValueError(f"optimal_prior_prob: num_samples must be > 0; got {num}")
    if num_fg > num:
        raise ValueError(
            f"optimal_prior_prob: num_foreground ({num_fg}) exceeds num_samples ({num})"
        )
    return min(max(num_fg / num, min_prob), max_prob)


def sampling_free_initial_prior(cfg: CfgNode, default: float) -> float:
    """A sigmoid classifier's prior at construction under Sampling-Free: 0.5 (bias 0) for the
    ablation without prior initialization (``MODEL.SAMPLING_FREE.PRIOR_INIT`` False), the
    constant ``PRIOR_PROB`` when it is > 0, else ``default`` until the trainer sets the
    estimate (``assigndet.engine.prior_estimation``)."""
    sf = cfg.MODEL.SAMPLING_FREE
    if not sf.PRIOR_INIT:
        return 0.5
    return sf.PRIOR_PROB if sf.PRIOR_PROB > 0 else default


class _SigmoidCESum(torch.autograd.Function):
    """Sum of y softplus(-x) + (1 - y) softplus(x); its gradient is sigmoid(x) - y."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        ctx.save_for_backward(logits, targets)
        # Not softplus(x) - x y (torch's binary_cross_entropy_with_logits): for confident
        # negatives that difference cancels in float32 (it is 0 for x < -15, 5% off at the prior
        # 1e-5), and the value matters here because it sets the guidance ratio.
        return (targets * F.softplus(-logits) + (1 - targets) * F.softplus(logits)).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, targets = ctx.saved_tensors
        return (torch.sigmoid(logits) - targets) * grad, None


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy from logits, summed over the valid entries.

    Computed in float32 whatever the input dtype (also under autocast): a batch sums about
    10^7 terms, and at the priors used here sigmoid(logit) is subnormal in float16. Value and
    gradient stay accurate for confident negatives (logit -20 adds its 2e-9).

    Args:
        logits: ``[..., K]`` logits (any float dtype).
        targets: ``[..., K]`` targets, one-hot classes in {0, 1} (all zeros for background);
            soft targets in [0, 1] are exact too.
        valid_mask: optional bool mask, either ``[..., K]`` (per entry) or ``[...]`` (per sample,
            e.g. False for label -1 or anchors outside the image); False entries add nothing.

    Returns:
        Scalar float32 tensor, the sum of the valid entries' losses (0 when none is valid).
    """
    if targets.shape != logits.shape:
        raise ValueError(
            f"sigmoid_ce_loss: targets {tuple(targets.shape)} must match logits "
            f"{tuple(logits.shape)}"
        )
    if valid_mask is not None:
        if valid_mask.shape not in (logits.shape, logits.shape[:-1]):
            raise ValueError(
                f"sigmoid_ce_loss: valid_mask {tuple(valid_mask.shape)} must be "
                f"{tuple(logits.shape)} or {tuple(logits.shape[:-1])}"
            )
        valid_mask = valid_mask.bool()
        logits, targets = logits[valid_mask], targets[valid_mask]
    return _SigmoidCESum.apply(logits.float(), targets.detach().float())


@torch.no_grad()
def guidance_ratio(
    cls_loss: Tensor,
    loc_loss: Tensor,
    fallback: Tensor | None = None,
    across_ranks: bool = False,
) -> Tensor:
    """The guidance g = L_loc / L_cls, without gradient.

    With ``across_ranks`` (and torch.distributed initialised) both losses are first reduced over
    ranks, separately, so every rank gets (sum of L_loc) / (sum of L_cls); this is a collective,
    so every rank must call it every step. The ratio is only used when both (reduced) losses
    are finite and > 0 and the ratio is finite; otherwise ``fallback`` (or 1.0) is returned, so
    a batch without positives (L_loc = 0) does not silently switch classification off.

    Args:
        cls_loss: scalar classification loss.
        loc_loss: scalar localisation loss that guides it.
        fallback: scalar ratio to use when this step's ratio is invalid; None means 1.0.
        across_ranks: reduce the losses over ranks ("global" guidance) instead of per rank.

    Returns:
        Scalar float32 tensor on the losses' device.
    """
    if cls_loss.numel() != 1 or loc_loss.numel() != 1:
        raise ValueError(
            f"guidance_ratio: losses must be scalars; got {tuple(cls_loss.shape)} and "
            f"{tuple(loc_loss.shape)}"
        )
    losses = torch.stack(
        [loc_loss.detach().float().reshape(()), cls_loss.detach().float().reshape(())]
    )
    if across_ranks:
        # the ratio of the means over ranks is the ratio of the sums
        losses = all_reduce_mean(losses)
    loc, cls = losses.unbind()
    ratio = loc / cls
    valid = torch.isfinite(losses).all() & (losses > 0).all() & torch.isfinite(ratio)
    if fallback is None:
        fallback = torch.ones((), dtype=torch.float32, device=ratio.device)
    return torch.where(valid, ratio, fallback.to(device=ratio.device, dtype=torch.float32))


class GuidedLossScaling(nn.Module):
    """Guided loss scaling of a classification loss: L_loc + g·δ·L_cls - log δ.

    g = stopgrad(L_loc / L_cls) is recomputed every call (:func:`guidance_ratio`), so the scaled
    classification loss equals δ·L_loc in value and its gradient is g·δ times that of L_cls.
    δ > 0 is learnable, parametrised as δ = exp(``log_delta``) with ``log_delta`` = 0 at init
    (δ = 1): δ cannot cross 0, and -log δ = -``log_delta`` is exact. The name avoids "bias", so
    the optimizer's bias lr/weight-decay rules do not apply; weight decay pulls δ towards 1.

    Guidance: ``"global"`` uses the losses summed over ranks (the paper's per-mini-batch g);
    ``"local"`` uses each rank's own losses (the official code).

    Guard: when this step's ratio is invalid (L_loc or L_cls zero or non-finite), the ratio of
    the previous call is reused, or 1.0 if there is none. That ratio is a plain tensor attribute,
    not a buffer: DDP's buffer broadcast and ``comm.broadcast_buffers`` leave each rank's own
    value, and checkpoints do not hold it (a resumed run restarts from 1.0 until a valid batch).
    δ always multiplies the classification term, so its parameter is used on every step (DDP
    needs no ``find_unused_parameters``). A non-finite L_cls still propagates to the output.

    Inside a trainer each call writes ``sf_<name>_delta`` (δ), ``sf_<name>_ratio`` (g) and
    ``sf_<name>_cls_raw`` (the unscaled classification loss) to the event storage, hence to
    metrics.json: the scaled loss equals δ·L_loc and says little on its own.

    ``delta_clamp`` = (min, max) keeps δ in that range by projecting ``log_delta`` onto
    [log min, log max] before each use; a clamp inside the graph would zero δ's gradient at the
    bound and could leave it stuck there.
    """

    @configurable
    def __init__(
        self, *, guidance: str = "global", delta_clamp: Sequence[float] = (), name: str = "cls"
    ) -> None:
        """
        Args:
            guidance: ``"global"`` or ``"local"``, see the class docstring.
            delta_clamp: ``()`` for none, or (min, max) with 0 < min <= 1 <= max.
            name: what the metrics are called (``sf_<name>_delta``...), e.g. ``"fcos"``.
        """
        super().__init__()
        if guidance not in GUIDANCE_MODES:
            raise ValueError(
                f"MODEL.SAMPLING_FREE.GUIDANCE must be one of {GUIDANCE_MODES}; got {guidance!r}"
            )
        self.guidance = guidance
        self.name = name
        self._log_delta_range: tuple[float, float] | None = None
        if len(delta_clamp) > 0:
            if len(delta_clamp) != 2 or not 0.0 < delta_clamp[0] <= 1.0 <= delta_clamp[1]:
                raise ValueError(
                    "MODEL.SAMPLING_FREE.DELTA_CLAMP must be [] or [min, max] with "
                    f"0 < min <= 1 <= max; got {list(delta_clamp)}"
                )
            self._log_delta_range = (math.log(delta_clamp[0]), math.log(delta_clamp[1]))
        self.log_delta = nn.Parameter(torch.zeros(()))
        self._last_ratio: Tensor | None = None

    @classmethod
    def from_config(cls, cfg: CfgNode, name: str = "cls") -> dict:
        sf = cfg.MODEL.SAMPLING_FREE
        return {"guidance": sf.GUIDANCE, "delta_clamp": tuple(sf.DELTA_CLAMP), "name": name}

    @property
    def delta(self) -> float:
        """The current δ (within the clamp), for logging."""
        log_delta = self.log_delta.detach()
        if self._log_delta_range is not None:
            log_delta = log_delta.clamp(*self._log_delta_range)
        return float(log_delta.float().exp())

    @property
    def last_ratio(self) -> float | None:
        """The guidance g used by the last call; None before the first."""
        return None if self._last_ratio is None else float(self._last_ratio)

    def forward(self, cls_loss: Tensor, loc_loss: Tensor) -> dict[str, Tensor]:
        """Scale ``cls_loss`` by the guidance and δ.

        Args:
            cls_loss: scalar raw classification loss (e.g. :func:`sigmoid_ce_loss` / #pos).
            loc_loss: scalar localisation loss that guides it; no gradient flows into it here.

        Returns:
            ``{"loss_cls": g·δ·cls_loss, "loss_delta": -log δ}``, scalar float32 tensors.
        """
        if self._log_delta_range is not None:
            with torch.no_grad():
                self.log_delta.clamp_(*self._log_delta_range)
        ratio = guidance_ratio(
            cls_loss, loc_loss, self._last_ratio, across_ranks=self.guidance == "global"
        )
        self._last_ratio = ratio
        log_delta = self.log_delta.float()
        storage = current_event_storage()
        if storage is not None:
            storage.put_scalar(f"sf_{self.name}_delta", float(log_delta.detach().exp()))
            storage.put_scalar(f"sf_{self.name}_ratio", float(ratio))
            storage.put_scalar(f"sf_{self.name}_cls_raw", float(cls_loss.detach().float()))
        return {"loss_cls": ratio * log_delta.exp() * cls_loss.float(), "loss_delta": -log_delta}

    def apply_to(
        self,
        losses: dict[str, Tensor],
        cls_key: str,
        loc_keys: Sequence[str],
        delta_key: str,
    ) -> dict[str, Tensor]:
        """A copy of a head's loss dict with ``losses[cls_key]`` guided by the sum of
        ``losses[k]`` for k in ``loc_keys`` and the -log δ term added as ``delta_key``."""
        missing = [k for k in (cls_key, *loc_keys) if k not in losses]
        if missing:
            raise KeyError(f"GuidedLossScaling: the losses {sorted(losses)} lack {missing}")
        scaled = self(losses[cls_key], sum(losses[k] for k in loc_keys))
        return {**losses, cls_key: scaled["loss_cls"], delta_key: scaled["loss_delta"]}

    def extra_repr(self) -> str:
        bounds = None
        if self._log_delta_range is not None:
            bounds = tuple(round(math.exp(b), 6) for b in self._log_delta_range)
        return f"name={self.name!r}, guidance={self.guidance!r}, delta_clamp={bounds}"
