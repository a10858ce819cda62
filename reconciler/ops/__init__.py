"""The day-2 commands: replay (with its progress and rate limit), audit and doctor."""
