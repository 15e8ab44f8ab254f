"""The review app for radiologists (FastAPI, Jinja2, uvicorn)."""
