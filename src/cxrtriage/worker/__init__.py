"""Orchestration: the Celery app, thin tasks, the scheduler and the processing pipeline."""
