"""cxr-triage: chest radiograph triage beside a PACS."""

__version__ = "0.1.0"
