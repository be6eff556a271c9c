import numpy as np
import torch

from tree_helpers import random_rays, random_tree
from turbonerf.bake.march_torch import march_torch
from turbonerf.bake.prune import prune_blocks
from turbonerf.bake.nerftree import cells_from_index


def _march(tree, o, d, block_weight=None):
    o, d = torch.from_numpy(o), torch.from_numpy(d)
    n = len(o)
    return march_torch(
        tree, o, d, d, torch.full((n,), 1.0), torch.full((n,), 5.0), torch.tensor([1.0, 0.5, 0.0]),
        step=0.05, dtype=torch.float64, block_weight=block_weight,
    )


def test_block_weights_are_the_largest_sample_weight_and_pruning_unseen_blocks_changes_nothing():
    tree = random_tree(coarse_res=8, fine_res=2, occupancy=0.3, seed=3)
    o, d = random_rays(n=400, seed=2)
    weights = torch.zeros(tree.n_blocks, dtype=torch.float64)
    full = _march(tree, o, d, weights)
    w = weights.numpy()
    assert (w >= 0).all() and (w <= 1).all() and (w > 0).any() and (w == 0).any()

    # dropping the blocks no sample weighted leaves every pixel as it was
    pruned = prune_blocks(tree, w > 0)
    assert pruned.n_blocks == int((w > 0).sum())
    again = _march(pruned, o, d)
    torch.testing.assert_close(again["rgb"], full["rgb"], atol=1e-12, rtol=0)
    torch.testing.assert_close(again["opacity"], full["opacity"], atol=1e-12, rtol=0)

    # dropping the most important block does change the image
    top = np.ones(tree.n_blocks, dtype=bool)
    top[int(np.argmax(w))] = False
    assert not torch.allclose(_march(prune_blocks(tree, top), o, d)["rgb"], full["rgb"])


def test_pruning_keeps_the_surviving_blocks_and_their_cells():
    tree = random_tree(coarse_res=6, fine_res=2, occupancy=0.5, seed=1)
    keep = np.arange(tree.n_blocks) % 3 == 0
    pruned = prune_blocks(tree, keep)
    np.testing.assert_array_equal(cells_from_index(pruned.index), cells_from_index(tree.index)[keep])
    np.testing.assert_array_equal(pruned.density, tree.density[keep])
    np.testing.assert_array_equal(pruned.dense_sh(), tree.dense_sh()[keep])
    pruned.validate()


def test_dilation_keeps_the_neighbours_of_kept_blocks_and_nothing_far():
    from turbonerf.bake.nerftree import NerfTree, index_from_cells
    from turbonerf.bake.prune import blocks_to_keep

    dc = 8
    ijk = np.array([[1, 1, 1], [2, 2, 2], [4, 4, 4], [7, 7, 7]])  # blocks 0..3
    cells = np.ravel_multi_index(ijk.T, (dc,) * 3).astype(np.int32)
    tree = NerfTree(index_from_cells(cells, dc), np.ones((4, 1, 1, 1), np.float16), np.zeros((4, 3), np.float16),
                    np.array([[-1, -1, -1], [1, 1, 1]], np.float32), 1)
    order = cells_from_index(tree.index)  # block m sits at cell order[m]
    w = np.where(order == cells[0], 0.5, 0.0)  # only the block at (1, 1, 1) is weighted
    kept_cells = set(order[blocks_to_keep(tree, w, 0.1, dilate=0)])
    assert kept_cells == {cells[0]}
    kept_cells = set(order[blocks_to_keep(tree, w, 0.1, dilate=1)])
    assert kept_cells == {cells[0], cells[1]}  # (2, 2, 2) touches (1, 1, 1); (4, 4, 4) does not
    kept_cells = set(order[blocks_to_keep(tree, w, 0.1, dilate=3)])
    assert kept_cells == {cells[0], cells[1], cells[2]}
