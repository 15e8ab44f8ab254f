"""DICOM at the edge: receiving, storing, reading pixels, gating, writing and sending SRs.

Pure: nothing here knows about the database, Celery or settings.
"""
