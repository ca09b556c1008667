"""The chat screen and its modal screens, one per module."""
