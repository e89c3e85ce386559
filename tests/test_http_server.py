"""The HTTP server every service's API runs on: it stops promptly, whoever is still connected."""

from __future__ import annotations

import http.client

import flask

from platform_core.http import HttpServer


def test_stop_ends_the_server_while_a_client_keeps_its_connection_open() -> None:
    app = flask.Flask("kept-alive")
    app.add_url_rule("/ping", "ping", lambda: "pong")
    server = HttpServer(app, "127.0.0.1", 0, threads=2)
    server.start()
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        client.request("GET", "/ping")
        response = client.getresponse()
        assert response.read() == b"pong"  # the connection stays open (HTTP/1.1 keep-alive)
        thread = server._thread
        assert thread is not None
        server.stop()
        assert not thread.is_alive()  # before: the loop ran on, and stop() gave up joining it after 5 s
        client.request("GET", "/ping")  # the server closed its end: the client sees it
        try:
            client.getresponse()
        except (ConnectionError, http.client.HTTPException):
            pass
        else:
            raise AssertionError("the kept-alive connection still answered after stop()")
    finally:
        client.close()
