"""The remediation queue: playbooks run against distrusted assets, behind approval gates."""
