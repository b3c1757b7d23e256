"""The inbound SMTP server: listeners, sessions and their policy."""
