"""pose2image: a camera pose decoded to a whole image ("Faster NeRFs" report, approach 1).

The camera (rotation, centre, intrinsics: :func:`turbonerf.methods.image_student.camera_vector`)
is frequency-encoded, an MLP turns it into a code, and a convolutional decoder
(:class:`turbonerf.methods.image_student.PoseDecoder`: a linear seed of ``channels`` x h0 x w0,
then ``stages`` 2x upsamplings with an RGB skip at every scale) paints the H x W image, padded to
a multiple of 2^stages and cropped. Nothing in it knows about 3D: the network must memorise the
map from poses to images. The report found that this works on a constrained forward-facing scene
and collapses to the background on a 360-degree scene, where nearby poses see very different
images; ``turbonerf distill --student pose2image`` trains it on teacher renders of sampled poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.methods.image_student import ImageStudent, PoseDecoder, StudentFrame, crop, fit_size, padded_size, to_hwc


@dataclass
class Pose2ImageConfig(StudentFrame):
    """pose2image hyper-parameters (after the frame, :class:`StudentFrame`, set by ``turbonerf distill``)."""

    stages: int = 5
    """2x upsampling stages of the decoder (the seed grid is ceil(H / 2^stages) x ceil(W / 2^stages))"""
    channels: int = 256
    """channels of the seed grid (halved at every stage, at least 16)"""
    code_dim: int = 256
    mlp_layers: int = 3
    pose_freqs: int = 4
    """frequency-encoding octaves of the camera vector"""
    upsampler: str = "bilinear"
    """bilinear (upsample + 3x3 convolution) or transposed (stride-2 transposed convolution)"""
    lr: float = 5e-4
    lr_decay_steps: int = 20_000
    """the learning rate falls 10x every this many steps"""


class Pose2Image(ImageStudent):
    """camera -> image, one decoder call per frame."""

    def __init__(self, config: Pose2ImageConfig, aabb: Tensor):
        super().__init__(aabb)
        c = self.config = config
        h0, w0 = padded_size(c.height, c.width, 2**c.stages)
        self.net = PoseDecoder(h0, w0, c.stages, c.channels, c.code_dim, c.mlp_layers, c.pose_freqs, c.upsampler)

    def render_views(self, cameras: Cameras, train: bool = False) -> Tensor:
        """N cameras -> rgb [N, H, W, 3] (rendered at the training size, resized to the cameras' if it differs)."""
        c = self.config
        rgb = crop(self.net.decode(self.net.code(self.camera_vectors(cameras)), train), c.height, c.width)
        return to_hwc(fit_size(rgb, cameras.height, cameras.width))
