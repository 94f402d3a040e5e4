"""The SwarmUI-compatible API on a unix socket: app.py (HTTP), routes.py, params.py, access.py, server.py."""
