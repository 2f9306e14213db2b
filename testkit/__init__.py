"""Real peers for the tests and the benchmarks: a software TPM (swtpm driven with tpm2-tools,
:mod:`testkit.tpm`), a Docker engine of their own (:mod:`testkit.docker_engine`) and an OCI
registry with htpasswd or token authentication (:mod:`testkit.registry`), each started on
request in a directory the caller names and stopped by the caller. There is no pytest in here
and nothing from ``tests``: the fixtures in ``tests/`` (``tpm_simulator``, ``docker_engine``,
``registry_server``...) build on these classes, and ``bench/`` uses them directly. It is not
part of the installed ``drydock`` distribution.
"""
