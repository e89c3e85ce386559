"""The ``aiot`` command: bring a platform up or down, and talk to its front door.

``aiot.cli`` holds the commands (typer); ``aiot.client`` is the HTTP client
they use, which finds the front door and the caller's token under
``AIOT_HOME`` and turns error replies back into the platform's typed errors.
Local life-cycle commands (up, down, status, broker) call the bootstrapper
directly; everything else goes through the front door, like any other client.
"""
