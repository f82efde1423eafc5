"""long-context-harness: evaluate softmax and SSMax attention at long context."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import harness.results` must not import torch.
    if name == "load_model":
        from harness.models.loading import load_model

        return load_model
    if name in ("LoadedModel", "ModelInfo", "describe_model"):
        from harness.models import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
