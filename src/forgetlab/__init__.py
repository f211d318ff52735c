"""forgetlab: verifiable machine unlearning for multimodal and text LLMs."""

__version__ = "0.1.0"
