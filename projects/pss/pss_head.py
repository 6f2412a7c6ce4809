"""The positive sample selector (PSS) branch of FCOS-PSS and ATSS-PSS."""

from __future__ import annotations

from torch import Tensor, nn

from assigndet.layers import prior_bias
from assigndet.modeling.heads import conv_tower


class PSSHead(nn.Module):
    """``NUM_CONVS`` x [3x3 conv -> norm -> ReLU] and a 3x3 conv to one logit per location.

    It reads the regression tower's output (the feature that also feeds the box and centerness
    predictors), with weights shared over levels. With ``stop_gradient`` its input is detached,
    so its losses reach the towers, FPN and backbone only through sigma(cls) and sigma(ctr) in
    the joint score, never through these convs (PSS paper, Sec. 3.3).
    """

    def __init__(
        self,
        in_channels: int,
        num_convs: int = 2,
        norm: str = "GN",
        prior_prob: float = 0.5,
        stop_gradient: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"MODEL.PSS.PRIOR_PROB must be in (0, 1); got {prior_prob}")
        self.stop_gradient = stop_gradient
        self.pss_tower = conv_tower(num_convs, in_channels, norm)
        self.pss_logits = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.pss_logits.bias, prior_bias(prior_prob))

    def forward(self, box_features: list[Tensor]) -> list[Tensor]:
        """L maps ``[N, C, H_l, W_l]`` -> L logit maps ``[N, 1, H_l, W_l]``."""
        if self.stop_gradient:
            box_features = [f.detach() for f in box_features]
        return [self.pss_logits(self.pss_tower(f)) for f in box_features]
