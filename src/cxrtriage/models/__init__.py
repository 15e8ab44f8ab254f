"""Model architectures, packages, inference, training and evaluation.

Pure: nothing here knows about the database, Celery or settings.
"""
