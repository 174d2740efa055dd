"""Prompt data: examples and splits, loaders for the public sets, built-in borderline and system prompts."""
