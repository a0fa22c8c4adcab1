"""The ML package: backbones, the MAPS model, losses, training, scoring, attention maps, checkpoints.

Plain PyTorch, no Django imports (except one thin module of Celery tasks). Built by the ml_worker
issue; see docs/architecture.md.
"""
