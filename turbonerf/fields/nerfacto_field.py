"""The fields of nerfacto (nerfstudio): a hash-grid radiance field with per-image appearance
embeddings, and the small hash-grid density fields of its proposal networks.

Both look points up in a hash grid through :func:`turbonerf.fields.contraction.points_to_unit_cube`:
with ``contract`` (unbounded scenes) every point is contracted into [-2, 2]^3 first; without it
the grid covers the scene box and points outside it get zero density.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from turbonerf.encodings.hashgrid import HashEncoding
from turbonerf.encodings.sh import sh_basis
from turbonerf.fields.contraction import points_to_unit_cube
from turbonerf.fields.hash_field import _mlp, hidden_activations, hidden_layers, trunc_exp


class ProposalDensityField(nn.Module):
    """Points -> density: hash encoding + a tiny MLP (nerfstudio's ``HashMLPDensityField``).

    Args:
        aabb: [2, 3] the scene box; contract: contract space around it (see the module docstring).
        n_levels, log2_table_size, base_resolution, max_resolution: the hash grid
            (nerfacto: 5, 17, 16, 128 / 256), two features per level.
        hidden, layers: the MLP's hidden width and hidden layers (nerfacto: 16, 1).
        hash_backend: "auto", "numba" or "torch".
    """

    def __init__(
        self,
        aabb: Tensor,
        contract: bool,
        n_levels: int = 5,
        log2_table_size: int = 17,
        base_resolution: int = 16,
        max_resolution: int = 128,
        hidden: int = 16,
        layers: int = 1,
        hash_backend: str = "auto",
    ):
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone().float().reshape(2, 3))
        self.contract = contract
        self.encoding = HashEncoding(n_levels, 2, log2_table_size, base_resolution, max_resolution, hash_backend)
        self.mlp = _mlp(self.encoding.out_dim, hidden, layers, 1)

    def density(self, x: Tensor) -> Tensor:
        """x: [N, 3] points -> sigma [N] float32 (>= 0)."""
        u, inside = points_to_unit_cube(x, self.aabb, self.contract)
        h = self.mlp(self.encoding(u))
        return trunc_exp(h[:, 0].float()) * inside

    @property
    def trunk_depth(self) -> int:
        """Hidden layers of the MLP (nerfacto: 1)."""
        return hidden_layers(self.mlp)

    def trunk_features(self, x: Tensor, upto: int) -> Tensor:
        """x: [N, 3] -> [N, hidden] ReLU activations of hidden layer ``upto`` (activation-based sampling)."""
        return hidden_activations(self.mlp, self.encoding(points_to_unit_cube(x, self.aabb, self.contract)[0]), upto)

    def forward(self, x: Tensor) -> Tensor:
        return self.density(x)


class NerfactoField(nn.Module):
    """Points (+ directions, + appearance embeddings) -> (sigma, rgb): nerfstudio's nerfacto field.

    x -> hash encoding [L*F] -> density MLP (``density_layers`` hidden layers of ``hidden``) ->
    1 + ``geo_features`` outputs: the raw density (activation trunc_exp) and the geometry
    features; the colour MLP (``color_layers`` hidden layers of ``color_hidden``) takes the
    geometry features, the SH encoding of the direction (``sh_degree`` bands) and a per-image
    appearance embedding (``appearance_dim``) -> sigmoid rgb.

    Appearance embeddings: one learnt vector per training image (``n_images``); rays of other
    cameras (evaluation views) use the mean of all embeddings, as nerfstudio does by default
    (``use_average_appearance_embedding``). ``n_images`` = 0 or ``appearance_dim`` = 0 turn them off.
    """

    def __init__(
        self,
        aabb: Tensor,
        contract: bool,
        n_images: int,
        appearance_dim: int = 32,
        n_levels: int = 16,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        hidden: int = 64,
        density_layers: int = 1,
        geo_features: int = 15,
        color_hidden: int = 64,
        color_layers: int = 2,
        sh_degree: int = 4,
        hash_backend: str = "auto",
    ):
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone().float().reshape(2, 3))
        self.contract = contract
        self.sh_degree = sh_degree
        self.appearance_dim = appearance_dim if n_images > 0 else 0
        self.n_images = n_images if self.appearance_dim > 0 else 0
        self.encoding = HashEncoding(n_levels, 2, log2_table_size, base_resolution, max_resolution, hash_backend)
        self.density_mlp = _mlp(self.encoding.out_dim, hidden, density_layers, 1 + geo_features)
        self.color_mlp = _mlp(geo_features + sh_degree**2 + self.appearance_dim, color_hidden, color_layers, 3)
        self.appearance = nn.Embedding(max(self.n_images, 1), max(self.appearance_dim, 1))
        nn.init.normal_(self.appearance.weight)

    def appearance_codes(self, camera_indices: Tensor | None, n: int) -> Tensor | None:
        """[n, appearance_dim] embeddings of ``camera_indices`` [n] (training images), or the mean
        embedding repeated n times when ``camera_indices`` is None (any other view); None when
        the field has no embeddings."""
        if self.appearance_dim == 0:
            return None
        if camera_indices is None:
            return self.appearance.weight.mean(dim=0).expand(n, -1)
        return self.appearance(camera_indices)

    def geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3] -> sigma [N] float32, geometry features [N, geo_features] (autocast dtype)."""
        u, inside = points_to_unit_cube(x, self.aabb, self.contract)
        h = self.density_mlp(self.encoding(u))
        return trunc_exp(h[:, 0].float()) * inside, h[:, 1:]

    def density(self, x: Tensor) -> Tensor:
        """x: [N, 3] points -> sigma [N] float32 (>= 0)."""
        return self.geometry(x)[0]

    @property
    def trunk_depth(self) -> int:
        """Hidden layers of the density MLP."""
        return hidden_layers(self.density_mlp)

    def trunk_features(self, x: Tensor, upto: int) -> Tensor:
        """x: [N, 3] -> [N, hidden] ReLU activations of the density MLP's hidden layer ``upto``."""
        return hidden_activations(self.density_mlp, self.encoding(points_to_unit_cube(x, self.aabb, self.contract)[0]), upto)

    def forward(self, x: Tensor, d: Tensor, appearance: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: [N, 3] points, d: [N, 3] unit directions, appearance: [N, appearance_dim] or None
        (the mean embedding) -> sigma [N], rgb [N, 3] (float32)."""
        sigma, geo = self.geometry(x)
        parts = [geo, sh_basis(d.float(), self.sh_degree).to(geo.dtype)]
        if self.appearance_dim > 0:
            code = self.appearance_codes(None, x.shape[0]) if appearance is None else appearance
            parts.append(code.to(geo.dtype))
        rgb = torch.sigmoid(self.color_mlp(torch.cat(parts, dim=-1)).float())
        return sigma, rgb
