"""Reduced precision inside the networks only (sdflow.nets.precision, train.amp=bf16 on CPU):
the networks compute in bfloat16, the flows (1x1 convolutions, latent state, log-determinants)
stay float32, and an inverse still undoes its forward map."""
import pytest
import torch

from sdflow.config import ModelConfig
from sdflow.flows.layers import AffineCoupling, CouplingNet, InvConv1x1
from sdflow.model import SDFlow
from sdflow.nets.precision import net_dtype, reduced_precision
from sdflow.train.loop import train
from test_train import all_state, make_cfg


def _randomised(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)
    return module


def test_context_sets_and_restores_the_dtype():
    assert net_dtype() is None
    with reduced_precision(torch.bfloat16):
        assert net_dtype() is torch.bfloat16
        with reduced_precision(None):
            assert net_dtype() is None
        assert net_dtype() is torch.bfloat16
    assert net_dtype() is None


def test_networks_compute_in_bf16_and_answer_in_the_callers_dtype():
    torch.manual_seed(0)
    net = _randomised(CouplingNet(6, 8, 16))
    x = torch.randn(2, 6, 8, 8)
    seen = []
    hook = net.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    full = net(x)
    with reduced_precision(torch.bfloat16):
        low = net(x)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert low.dtype == torch.float32
    err = (low - full).abs().max() / full.abs().max()
    assert 0 < err < 0.05  # bf16 rounding: different, but close


def test_flow_layers_stay_float32_and_stay_invertible():
    torch.manual_seed(1)
    conv = InvConv1x1(8)
    x = torch.randn(2, 8, 6, 6)
    with reduced_precision(torch.bfloat16):
        y, ld = conv(x)
    y_ref, ld_ref = conv(x)
    assert torch.equal(y, y_ref) and torch.equal(ld, ld_ref)  # not touched by autocast

    coupling = _randomised(AffineCoupling(8, cond_channels=3, hidden=16))
    cond = torch.randn(2, 3, 6, 6)
    with reduced_precision(torch.bfloat16):
        z, ld = coupling(x, cond)
        back, ld_inv = coupling.inverse(z, cond)
    assert z.dtype == torch.float32 and ld.dtype == torch.float32
    assert (back - x).abs().max() < 1e-5          # the inverse undoes the forward map
    assert (ld + ld_inv).abs().max() < 1e-4


def test_model_likelihoods_under_bf16_are_close_to_float32():
    torch.manual_seed(2)
    model = SDFlow(ModelConfig.preset("tiny")).eval()
    for name, p in model.named_parameters():
        if "conv3" in name:
            torch.nn.init.normal_(p, 0, 0.05)
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = model.hr_log_likelihood(y)
        with reduced_precision(torch.bfloat16):
            low = model.hr_log_likelihood(y)
    assert low.dtype == torch.float32
    assert 0 < (low - ref).abs().item() < 0.05  # bits/dim


def test_bf16_training_on_cpu_keeps_float32_weights_and_changes_the_result(tmp_path):
    from test_train import make_data

    data = make_data(tmp_path / "data")
    cfg = make_cfg(data, **{"train.amp": "bf16", "train.steps": 4, "train.stage1_steps": 2})
    train(cfg, tmp_path / "a")
    log = (tmp_path / "a" / "train.log").read_text()
    assert "amp bf16" in log and "not supported" not in log
    state = all_state(tmp_path / "a")
    assert all(v.dtype in (torch.float32, torch.int64, torch.bool) or not v.is_floating_point()
               for v in state.values())
    ref = make_cfg(data, **{"train.steps": 4, "train.stage1_steps": 2})
    train(ref, tmp_path / "b")
    other = all_state(tmp_path / "b")
    assert any(not torch.equal(state[k], other[k]) for k in state if k.startswith("model."))


def test_fp16_on_cpu_falls_back_to_float32_with_a_warning(tmp_path):
    from test_train import make_data

    data = make_data(tmp_path / "data")
    train(make_cfg(data, **{"train.amp": "fp16", "train.steps": 1, "train.stage1_steps": 1}), tmp_path / "a")
    log = (tmp_path / "a" / "train.log").read_text()
    assert "train.amp=fp16 is not supported on cpu" in log and "amp none" in log


@pytest.mark.parametrize("native", [False, True])
def test_amp_auto_takes_bf16_only_where_the_cpu_runs_it_natively(tmp_path, monkeypatch, native):
    from test_train import make_data

    import sdflow.nets.precision as precision
    import sdflow.train.loop as loop
    monkeypatch.setattr(precision, "runs_natively", lambda device, p: native and p == "bf16")
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    data = make_data(tmp_path / "data")
    train(make_cfg(data, **{"train.amp": "auto", "train.steps": 1, "train.stage1_steps": 1}), tmp_path / "a")
    log = (tmp_path / "a" / "train.log").read_text()
    want = "bf16" if native else "none"
    assert f"train.amp=auto: {want} on this cpu" in log and f"amp {want}" in log
    assert "emulates" not in log


def test_a_network_kept_float32_ignores_the_reduced_context():
    from sdflow.nets.discriminators import PatchDiscriminator
    from sdflow.nets.precision import keep_float32

    torch.manual_seed(3)
    critic = PatchDiscriminator(3, 16, 2)
    x = torch.randn(2, 3, 32, 32)
    seen = []
    first = next(m for m in critic.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with reduced_precision(torch.bfloat16):
        low = critic(x)
    keep_float32(critic)
    with reduced_precision(torch.bfloat16):
        kept = critic(x)
    hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert torch.equal(kept, critic(x)) and not torch.equal(low, kept)


def test_amp_float32_keeps_the_named_networks_float32_in_a_bf16_run(tmp_path, monkeypatch):
    from test_train import make_data

    import sdflow.train.loop as loop
    seen = {}
    data = make_data(tmp_path / "data")
    cfg = make_cfg(data, **{"train.amp": "bf16", "train.steps": 2, "train.stage1_steps": 1,
                            "train.amp_float32": ["critics", "content_extractor"]})

    def record(name):
        def hook(m, i, o):
            seen.setdefault(name, set()).add(o.dtype)
        return hook

    real_build = loop.Trainer._build

    def build(self):
        real_build(self)
        first = lambda net: next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        first(self.critics["hr"]).register_forward_hook(record("critic"))
        first(self.model.content_extractor).register_forward_hook(record("E"))
        first(self.model.f_hr).register_forward_hook(record("f_hr"))

    monkeypatch.setattr(loop.Trainer, "_build", build)
    train(cfg, tmp_path / "a")
    log = (tmp_path / "a" / "train.log").read_text()
    assert "train.amp: critics in float32" in log and "train.amp: content_extractor in float32" in log
    assert seen["critic"] == {torch.float32} and seen["E"] == {torch.float32}
    assert torch.bfloat16 in seen["f_hr"]            # the others still compute in bf16
    with pytest.raises(ValueError, match="amp_float32: unknown networks"):
        make_cfg(data, **{"train.amp_float32": ["f_hf"]}).validate()
