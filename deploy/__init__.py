"""Deployment: workspace set-up, promotion, rollback, canary, the loop, and the full app."""
