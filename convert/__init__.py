"""Converters that turn other model formats into Hugging Face model directories."""
