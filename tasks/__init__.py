"""One room per queue: payload models and pure domain logic, with thin Celery tasks beside them."""
