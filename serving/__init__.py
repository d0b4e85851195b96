"""Serving: the OpenAI protocol, the inference engines and the Ray Serve app factory."""
