import pytest
import torch


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(monkeypatch):
    """Tests see a CPU without native bfloat16, so that --precision auto (the default) is fp32 on
    every machine and the files compare with the float32 model; tests of auto say otherwise."""
    import sdflow.nets.precision

    monkeypatch.setattr(sdflow.nets.precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A saved tiny SDFlow (.safetensors) with random weights, for end-to-end tests."""
    from sdflow import ModelConfig, SDFlow
    from sdflow.checkpoints import save_model

    # Seeded for a reproducible model, without disturbing the global RNG of other tests.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SDFlow(ModelConfig.preset("tiny"))
        with torch.no_grad():
            # A fresh model's zero-initialised last layers make every coupling an identity; a
            # small perturbation makes every layer act, as in a trained model.
            for p in model.parameters():
                if p.abs().max() == 0:
                    p.normal_(0.0, 0.02)
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny.safetensors")
