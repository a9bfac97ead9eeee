"""Launchers of the local stack: the real services as plain processes on 127.0.0.1."""
