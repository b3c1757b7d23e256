"""Screening of inbound (``mx``) clients before their mail costs anything: ``[screen]``."""
