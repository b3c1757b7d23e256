"""Routing: the single authority that says where a recipient's mail goes."""
