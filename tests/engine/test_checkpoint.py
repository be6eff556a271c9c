import pytest
import torch

from turbonerf.engine import checkpoint as ck
from turbonerf.errors import TurboNerfError


def test_round_trip_with_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, groups = ck.optimizer_tensors(opt)
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()} | tensors, {"method": "m", "step": 3, "optimizer_groups": groups})
    loaded, meta = ck.load_checkpoint(path)
    assert meta["step"] == 3 and meta["method"] == "m" and meta["format_version"] == ck.FORMAT_VERSION
    assert torch.equal(loaded["model.weight"], model.weight)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    ck.load_optimizer_tensors(opt2, {k: v for k, v in loaded.items() if k.startswith("optim.")}, meta["optimizer_groups"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3
    assert torch.equal(s1["state"][0]["exp_avg"], s2["state"][0]["exp_avg"])


def test_crash_while_writing_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.safetensors"
    ck.save_checkpoint(path, {"x": torch.ones(2)}, {"method": "m", "step": 1})

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken_save)
    with pytest.raises(TurboNerfError, match="disk full"):
        ck.save_checkpoint(path, {"x": torch.zeros(2)}, {"method": "m", "step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]  # no temp file left
    tensors, meta = ck.load_checkpoint(path)
    assert meta["step"] == 1 and torch.equal(tensors["x"], torch.ones(2))


def test_previous_checkpoint_is_kept(tmp_path):
    path = tmp_path / "latest.safetensors"
    ck.save_checkpoint(path, {"x": torch.ones(1)}, {"method": "m", "step": 1})
    ck.save_checkpoint(path, {"x": torch.ones(1) * 2}, {"method": "m", "step": 2})
    assert ck.read_checkpoint_meta(tmp_path / "previous.safetensors")["step"] == 1
    assert ck.read_checkpoint_meta(path)["step"] == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"])
def test_corrupt_files_are_refused_with_their_name(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(TurboNerfError, match="bad.safetensors"):
        ck.load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    ck.save_checkpoint(path, {"x": torch.randn(1000)}, {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TurboNerfError, match="t.safetensors"):
        ck.load_checkpoint(path)


def test_a_checkpoint_from_before_the_carved_grids_still_loads(tmp_path):
    import torch

    from turbonerf.engine.loop import load_model_tensors
    from turbonerf.errors import TurboNerfError
    from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig

    cfg = InstantNGPConfig(n_levels=4, log2_table_size=12, max_resolution=64, hidden=16, grid_resolution=16)
    old = {f"model.{k}": v for k, v in InstantNGP(cfg, torch.tensor([[-1.0] * 3, [1.0] * 3])).state_dict().items()
           if k != "grid.allowed"}
    model = InstantNGP(cfg, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    model.grid.allowed.zero_()
    load_model_tensors(model, old, tmp_path / "old.safetensors")
    assert not model.grid.allowed.any()  # kept as built
    del old["model.grid.density"]
    with pytest.raises(TurboNerfError, match="grid.density"):
        load_model_tensors(model, old, tmp_path / "old.safetensors")
