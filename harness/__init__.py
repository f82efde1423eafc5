"""long-context-harness: evaluate softmax and SSMax attention at long context."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import harness.results` must not import torch.
    if name in ("load_model", "LoadedModel", "ModelInfo", "describe_model"):
        from harness import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
