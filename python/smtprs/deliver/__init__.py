"""Delivery agents: one per kind of next hop, behind the contract in base.py."""
