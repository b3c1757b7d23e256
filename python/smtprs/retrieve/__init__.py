"""Retrieval: the POP3 server over the users' Maildirs."""
