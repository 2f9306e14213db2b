"""The runtime queue: MCP servers launched where policy allows, probed, stopped."""
