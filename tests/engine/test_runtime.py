import shutil

import pytest
import torch

from turbonerf.engine import runtime
from turbonerf.errors import TurboNerfError


def test_bf16_only_where_native(monkeypatch):
    """--bf16 takes effect only on hardware with native bf16: emulated bf16 is ~20x slower."""
    cpu = torch.device("cpu")
    assert runtime.bf16_used(cpu, False) is False
    assert runtime.bf16_used(cpu, True) == runtime.native_bf16("cpu")
    monkeypatch.setattr(runtime, "native_bf16", lambda device_type: False)
    with runtime.autocast(cpu, enabled=True):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32
    monkeypatch.setattr(runtime, "native_bf16", lambda device_type: True)
    with runtime.autocast(cpu, enabled=True):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    for off in (runtime.autocast(cpu), runtime.autocast(cpu, enabled=False)):  # float32 unless asked
        with off:
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


def test_configure_without_bf16_keeps_float32_matmuls_exact():
    """--fp32 means float32 throughout: configure(bf16=False) leaves no reduced-precision matmul path
    (with "medium", oneDNN computes float32 matmuls in bf16 on AMX hosts)."""
    a = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    b = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    runtime.configure(torch.device("cpu"))  # the default: float32
    assert torch.get_float32_matmul_precision() == "highest"
    torch.testing.assert_close((a @ b).double(), a.double() @ b.double(), atol=1e-4, rtol=0)
    runtime.configure(torch.device("cpu"), bf16=True)
    assert torch.get_float32_matmul_precision() == "medium"


class _TwoChildren(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        self.act = torch.nn.Sigmoid()  # no parameters: left alone

    def forward(self, x):
        return self.act(self.net(x))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="no C++ compiler for torch.compile on the CPU")
def test_compile_networks_keeps_outputs_gradients_and_checkpoint_keys():
    torch.manual_seed(0)
    eager, compiled = _TwoChildren(), _TwoChildren()
    compiled.load_state_dict(eager.state_dict())
    assert runtime.compile_networks(compiled, torch.device("cpu")) == ["net"]
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their keys
    x = torch.randn(16, 4)
    ya, yb = eager(x), compiled(x)
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.sum().backward()
    yb.sum().backward()
    for pa, pb in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_compile_networks_refuses_without_a_compiler(monkeypatch):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    with pytest.raises(TurboNerfError, match="C\\+\\+ compiler"):
        runtime.compile_networks(_TwoChildren(), torch.device("cpu"))
