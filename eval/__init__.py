"""Evaluation: offline comparisons, judges, online statistics, the promotion gate and reports."""
