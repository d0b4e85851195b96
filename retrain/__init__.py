"""Retraining: datasets to TRL trainers on LoRA, the job runner, and the demo base model."""
