"""Shared adapters: the outside systems more than one queue room talks to (the Docker engine,
buildah's and the engine's image stores, OCI registries and their credentials, the Kubernetes
API, git). Below the rooms and the Celery runtime, above the models: no Celery here, and no
room's logic."""
