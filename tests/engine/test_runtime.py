import torch

from turbonerf.engine import runtime


def test_bf16_only_where_native(monkeypatch):
    """--bf16 takes effect only on hardware with native bf16: emulated bf16 is ~20x slower."""
    cpu = torch.device("cpu")
    assert runtime.bf16_used(cpu, False) is False
    assert runtime.bf16_used(cpu, True) == runtime.native_bf16("cpu")
    monkeypatch.setattr(runtime, "native_bf16", lambda device_type: False)
    with runtime.autocast(cpu):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32
    monkeypatch.setattr(runtime, "native_bf16", lambda device_type: True)
    with runtime.autocast(cpu):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with runtime.autocast(cpu, enabled=False):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32


def test_native_bf16_follows_cpu_capabilities(monkeypatch):
    runtime.native_bf16.cache_clear()
    try:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False, "amx_bf16": False})
        assert runtime.native_bf16("cpu") is False
        runtime.native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
        assert runtime.native_bf16("cpu") is True
    finally:
        runtime.native_bf16.cache_clear()
