"""The builds queue: a git revision in, one image per target platform out, recorded in the
artifact ledger (``build_runs``, ``build_platforms``, build logs as artifacts)."""
