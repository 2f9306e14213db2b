"""The attestation queue: evidence verification (TPM 2.0, AMD SEV-SNP, Intel TDX), accelerator
posture, VM inventory and the trust registry's lifecycle."""
