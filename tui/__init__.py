"""The Textual chat app (`qwen-edge chat`): conversations with history on disk."""
