"""The workflows room: durable multi-step runs of a project's code (definitions first)."""
