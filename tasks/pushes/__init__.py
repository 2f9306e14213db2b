"""The pushes queue: platform images to a registry, multi-platform index tags, and retention,
with every registry step recorded as telemetry (``registry_events``)."""
