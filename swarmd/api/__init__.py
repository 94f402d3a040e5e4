"""The SwarmUI-compatible API on a unix socket: app.py (HTTP), routes.py, params.py, access.py, server.py."""


class SocketInUse(RuntimeError):
    """The socket path is taken: by a live daemon, or by something that is not a socket. (Here, not in
    server.py: the CLI catches it without importing the web stack before the backends start.)"""
