"""Asking the node manager to run, find and stop services: the client side of placement.

A service that starts services of its own (the deployer: model replicas and app instances)
talks to the node manager through one ``PlacementClient`` over Kafka request/reply:

    place(spec, avoid)   ──▶ PlaceService   ──▶ Placement (on a node not in ``avoid`` where there is one)
    locate(service_id)   ──▶ LocateService  ──▶ Placement, or None when it is not placed or no answer came
    unplace(service_id)  ──▶ UnplaceService ──▶ stopped wherever it ran (one not placed is stopped already)
    wait_healthy(...)    ──▶ its health URL answers 200 (or it runs), or PlatformError when it
                             crash-loops or stays silent past the timeout
"""

from __future__ import annotations

import logging
import time

import requests

from platform_core.nodes import (
    LocateService,
    Placement,
    PlaceService,
    ServiceSpec,
    ServiceState,
    UnplaceService,
    node_manager_topic,
)
from platform_sdk.bus import Requester
from platform_sdk.errors import NotFound, PlatformError, Unavailable
from platform_sdk.settings import Settings

log = logging.getLogger(__name__)


class PlacementClient:
    """Place, locate, unplace and health-check services through the node manager."""

    def __init__(self, requester: Requester, settings: Settings) -> None:
        self.requester = requester
        self.settings = settings
        self.topic = node_manager_topic(requester.bus.topics)
        self.waits = settings.node_manager  # place_wait_s, locate_wait_s, unplace_wait_s

    def place(self, spec: ServiceSpec, avoid: list[str]) -> Placement:
        """Start ``spec`` on the least-loaded node, not on one of ``avoid`` unless no other has room."""
        try:
            return self.requester.request(
                self.topic, PlaceService(spec=spec, avoid=avoid), Placement, self.waits.place_wait_s
            )
        except Unavailable:
            if not avoid:
                raise
            # Fewer nodes than replicas: share a node rather than not serve.
            return self.requester.request(
                self.topic, PlaceService(spec=spec), Placement, self.waits.place_wait_s
            )

    def locate(self, service_id: str) -> Placement | None:
        """Where ``service_id`` runs now, with its state; None when it is not placed or nobody answers."""
        try:
            return self.requester.request(
                self.topic, LocateService(service_id=service_id), Placement, self.waits.locate_wait_s
            )
        except PlatformError:
            return None

    def unplace(self, service_id: str) -> None:
        """Stop a placed service wherever it runs; one that is not placed is already stopped."""
        try:
            self.requester.request(
                self.topic, UnplaceService(service_id=service_id), Placement, self.waits.unplace_wait_s
            )
        except NotFound:
            pass
        except PlatformError as exc:
            log.warning("stopping %s: %s", service_id, exc)

    def wait_healthy(self, service_id: str, health_url: str | None) -> None:
        """Until ``health_url`` answers 200 (or, without one, the service runs); fails on a crash loop.

        Waits ``deployer.health_timeout_s`` at most; a crash loop is what the heartbeat monitor
        gives up (``monitor.crash_loop_limit``).
        """
        timeout_s = self.settings.deployer.health_timeout_s
        deadline = time.monotonic() + timeout_s
        next_check = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if health_url is not None:
                try:
                    if requests.get(health_url, timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            if time.monotonic() >= next_check or health_url is None:
                next_check = time.monotonic() + 2.0
                placement = self.locate(service_id)
                state = placement.state if placement is not None else None
                if health_url is None and state is not None and state.state == "running":
                    return
                if state is not None and crash_looping(state, self.settings.monitor.crash_loop_limit):
                    raise PlatformError(
                        f"{service_id} crashed {state.restarts + 1} times while "
                        f"starting; see `aiot logs {service_id}`"
                    )
            time.sleep(0.2)
        raise PlatformError(
            f"{service_id} did not answer {health_url or 'as running'} within "
            f"{timeout_s:.0f}s; see `aiot logs {service_id}`"
        )


def crash_looping(state: ServiceState, limit: int) -> bool:
    """The heartbeat monitor gave up on it (it restarts a crash ``limit - 1`` times), or it failed."""
    return state.state == "failed" or (state.state in ("exited", "stopped") and state.restarts >= limit - 1)
