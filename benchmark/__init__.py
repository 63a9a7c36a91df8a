"""The k6 benchmark of a Nixie node against a bare FastAPI app."""
