"""The Celery app, queue topology, settings, and the base task every Drydock task uses."""
