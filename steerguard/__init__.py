"""steerguard: read a language model's activations to judge prompts, steer them to answer safely."""

__version__ = "0.1.0"
