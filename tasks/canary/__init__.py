"""The canary: a job on every queue that proves the queue is served end to end.

Operators can also use it to rehearse the failure path (transient failures, a permanent failure,
a slow job) without touching real work.
"""
