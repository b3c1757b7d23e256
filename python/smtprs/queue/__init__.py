"""The queue: the durable spool and the scheduler that drives delivery."""
