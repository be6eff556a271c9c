import torch

from turbonerf.fields.contraction import contract_inf, normalize_to_box, points_to_unit_cube


def test_identity_inside_the_unit_cube():
    x = torch.rand(1000, 3) * 2.0 - 1.0
    assert torch.equal(contract_inf(x), x)


def test_far_points_land_inside_radius_two():
    x = torch.randn(1000, 3) * 10.0 ** torch.randint(0, 7, (1000, 1)).float()
    x = x[x.abs().amax(-1) > 1.0]
    y = contract_inf(x)
    assert (y.abs().amax(-1) < 2.0).all() and (y.abs().amax(-1) > 1.0).all()
    # along each point's direction, with ||y||_inf = 2 - 1/||x||_inf
    n = x.abs().amax(-1)
    assert torch.allclose(y.abs().amax(-1), 2.0 - 1.0 / n, atol=1e-6)
    assert torch.allclose(y / y.norm(dim=-1, keepdim=True), x / x.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.allclose(contract_inf(torch.tensor([[1e9, 0.0, 0.0]])), torch.tensor([[2.0, 0.0, 0.0]]))


def test_continuous_at_the_cube_boundary():
    x = torch.tensor([[1.0, 0.3, -0.2], [1.0 + 1e-5, 0.3, -0.2]])
    y = contract_inf(x)
    assert torch.allclose(y[0], y[1], atol=1e-4)


def test_unit_cube_lookup_box_and_contract():
    aabb = torch.tensor([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]])
    pts = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [100.0, 0.0, 0.0]])
    assert torch.allclose(normalize_to_box(pts[:2], aabb), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    u, inside = points_to_unit_cube(pts, aabb, contract=False)
    assert inside.tolist() == [True, True, False]
    assert torch.allclose(u[0], torch.full((3,), 0.5))
    u, inside = points_to_unit_cube(pts, aabb, contract=True)
    assert inside.all() and (u >= 0).all() and (u <= 1).all()
    assert torch.allclose(u[1], torch.full((3,), 0.75))  # the box corner maps to +-1 -> (1 + 2) / 4


def test_uncontract_inverts_the_contraction():
    from turbonerf.fields.contraction import uncontract_inf

    x = torch.randn(2000, 3) * torch.logspace(-1, 3, 2000)[:, None]
    torch.testing.assert_close(uncontract_inf(contract_inf(x)), x, rtol=1e-3, atol=1e-5)

