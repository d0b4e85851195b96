"""The tiny demo base model: its corpus (`corpus`, pure data) and its builder (`build`, torch)."""
