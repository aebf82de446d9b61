"""sdflow: SDFlow for unpaired real-world x4 super-resolution and realistic downscaling.

    import sdflow
    model = sdflow.load("model.safetensors")      # or the authors' folder of .pth files
    sr = model.super_resolve(lr, tau=0.8)          # [B,3,h,w] in [-1,1] -> [B,3,4h,4w]
    lr = model.downscale(hr, tau=0.8)              # [B,3,H,W] -> [B,3,ceil(H/4),ceil(W/4)]
    pipe = sdflow.Pipeline.load("model.safetensors", precision="auto")   # any size, tiles, batches
    sr = pipe.super_resolve(big_lr, tau=0.8, seed=0)

docs/architecture.md maps the modules.
"""
__version__ = "0.1.0"

from sdflow.config import ModelConfig  # noqa: E402


def __getattr__(name):
    # The model pulls in torch; keep `import sdflow` light for the CLI's --help.
    if name == "SDFlow":
        from sdflow.model import SDFlow
        return SDFlow
    if name == "load":
        from sdflow.checkpoints import load
        return load
    if name == "Pipeline":
        from sdflow.pipeline import Pipeline
        return Pipeline
    raise AttributeError(f"module 'sdflow' has no attribute {name!r}")


__all__ = ["ModelConfig", "SDFlow", "Pipeline", "load", "__version__"]
