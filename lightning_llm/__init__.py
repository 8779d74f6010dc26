"""lightning_llm: build and train a GPT-style language model from scratch on PyTorch Lightning."""

from lightning_llm.config import ComponentSpec, GPTConfig

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy, so `import lightning_llm` (and the config) stays torch-free
    if name == "GPT":
        from lightning_llm.model import GPT

        return GPT
    raise AttributeError(name)


__all__ = ["GPT", "GPTConfig", "ComponentSpec", "__version__"]
