import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A saved tiny SDFlow with random, non-identity weights."""
    from sdflow import ModelConfig, SDFlow
    from sdflow.checkpoints import save_model

    torch.manual_seed(0)
    model = SDFlow(ModelConfig.preset("tiny"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv3" in name:  # the zero-initialised last layers: make every step act
                p.normal_(0, 0.02)
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny.safetensors")
