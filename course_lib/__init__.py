"""Reference implementations for the course."""
