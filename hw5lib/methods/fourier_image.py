"""The image filter ascent optimizes: a Fourier spectrum with a 1/f^decay scale and ImageNet's
colour correlation (Olah et al., 2017; Lucid's fft_image), and the random jitter, rotation and
scale applied at each step."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Square root of ImageNet's RGB color covariance (Lucid's ``color_correlation_svd_sqrt``), its
# columns scaled to at most unit norm: independent logits become naturally correlated colors.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


# Logit change per unit spectrum coefficient at one cycle per image. With decay_power 2 this is
# Lucid's ``fft_image`` scaling at 128 x 128 (f in cycles per pixel floored at 1/128, orthonormal
# FFT, divided by 4); counting f in cycles per image makes it independent of the image size.
_SPECTRUM_GAIN = 32.0


INIT_STD = 0.01  # start near gray, as Lucid's ``fft_image``


def spectrum_scale(size: tuple[int, int], decay_power: float) -> Tensor:
    """1 / f**decay_power for the rfft2 frequencies of an image of ``size`` (H, W), f in cycles
    per image and at least 1 -> [H, W//2+1]. Power 1 is the amplitude spectrum of natural images
    that Olah et al. (2017) use; 2 also damps the pixel-level textures a small network climbs."""
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None] * h  # (H, 1)
    fx = torch.fft.rfftfreq(w)[None, :] * w  # (1, W//2+1)
    return (fy**2 + fx**2).sqrt().clamp_min(1.0) ** -decay_power


def spectrum_to_pixels(spectrum: Tensor, scale: Tensor, size: tuple[int, int]) -> Tensor:
    """Spectrum [N,C,H,W//2+1,2] (real, imag) -> pixels [N,C,H,W] in (0,1): inverse FFT of the
    frequency-scaled spectrum, color decorrelation (3 channels), then a sigmoid (Olah et al.)."""
    logits = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=size, norm="forward")
    logits = _SPECTRUM_GAIN * logits  # (N, C, H, W)
    if logits.shape[1] == 3:
        # A 1x1 convolution: ~3x faster than the same einsum (a batched matmul) forward+backward.
        logits = F.conv2d(logits, _COLOR_SQRT[:, :, None, None])
    return torch.sigmoid(logits)


def random_affine(
    x: Tensor,
    generator: torch.Generator | None,
    *,
    rotate: float,
    rescale: float,
    shift: float,
) -> Tensor:
    """Each image of x [N,C,H,W] rotated by up to ``rotate`` degrees, scaled by up to 1 +-
    ``rescale`` and shifted by up to ``shift`` pixels, drawn uniformly; borders reflect. Features
    that survive this are not pixel-grid artifacts ("transformation robustness", Olah et al.)."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # (N, 4) in [-1, 1)
    angle = u[:, 0] * math.radians(rotate)
    zoom = 1 + u[:, 1] * rescale
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    tx, ty = u[:, 2] * 2 * shift / w, u[:, 3] * 2 * shift / h  # in [-1, 1] grid units
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
