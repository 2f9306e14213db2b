"""SQLAlchemy models of the outcome store and the queries that read and write them."""
