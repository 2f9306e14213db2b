# Thin wrappers; the scripts are the source of truth (a fresh Debian may not have make).
.PHONY: up test bench bench-builds bench-attestation bench-beat bench-stream bench-runtime

up:
	scripts/up

test:
	scripts/test

bench:
	.venv/bin/python bench/throughput.py

bench-builds:
	.venv/bin/python bench/builds.py

bench-attestation:
	.venv/bin/python bench/attestation.py

bench-beat:
	.venv/bin/python -m bench.beat

bench-stream:
	.venv/bin/python -m bench.stream

bench-runtime:
	.venv/bin/python -m bench.runtime
