"""An ASGI app for uvicorn under hostel (docs/apps.md)."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"ok\n" if scope["path"] == "/healthz" else b"hello from uvicorn\n"
    print("asgi: GET", scope["path"])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
