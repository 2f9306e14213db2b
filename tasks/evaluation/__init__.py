"""The evaluation queue: certifications of image digests, the policy engine, Beat upkeep."""
