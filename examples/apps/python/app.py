"""A WSGI app for gunicorn under hostel (docs/apps.md)."""
import os


def app(environ, start_response):
    if environ["PATH_INFO"] == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    # Reaches `hostel logs python` only with PYTHONUNBUFFERED=1: stdout is a file.
    print("python: GET", environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"hello from gunicorn, pid {os.getpid()}\n".encode()]
