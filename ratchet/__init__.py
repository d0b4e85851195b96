"""ratchet: serve a chat model, learn from its users, ship only what proves better."""

__version__ = "0.1.0"
