"""The REST API (FastAPI), a thin layer over crowbar.services."""
