"""A Kafka cluster across bootstrapped hosts: one broker (and controller) per host named in the
inventory's ``brokers``.

``aiot bootstrap`` makes the cluster's identity once on the machine that runs it
(``AIOT_HOME/run/kafka-cluster.json``, 0600: the KRaft cluster id and the super user's password;
``aiot destroy`` forgets it) and, before the main host starts, on each broker host:

    member file   AIOT_HOME/secrets/kafka-member.json on the host (0600): its node id, address
                  and ports, the quorum's voters (every member's address and controller port),
                  the cluster id and the super user's password
    start         ``python -m bootstrapper.host broker``: ``start_member`` formats its log dir the
                  first time (kept across restarts: a member that comes back rejoins and catches
                  up) and launches the broker in its own session, recorded in
                  AIOT_HOME/run/kafka-member.json; the last member waits until the cluster answers

The main host's platform then uses the cluster as a configured one: ``kafka.bootstrap_servers``
names every member, its secrets file (written once) names the super user, from which ``aiot up``'s
machinery makes the platform's principals; every host's topics get three replicas, two in sync.
``python -m bootstrapper.host down`` stops the member; ``down --purge`` (``aiot destroy``) also
removes its log dir.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from bootstrapper.kafka import KafkaBroker, Voter, new_cluster_id
from bootstrapper.local import alive_process, process_record, terminate_processes
from bootstrapper.providers import Progress
from platform_sdk.principals import new_secret
from platform_sdk.runstate import ProcessRecord, private_dir, private_file
from platform_sdk.settings import Settings

IDENTITY_FILE = "kafka-cluster.json"
MEMBER_FILE = "kafka-member.json"
MEMBER_DIR = "kafka-member"
MEMBER_PROCESS = "kafka-member"


class ClusterIdentity(BaseModel):
    """What every member of one cluster shares."""

    cluster_id: str
    admin_password: SecretStr


class MemberAddress(BaseModel):
    node_id: int = Field(ge=1)
    host: str
    port: int = Field(ge=1, le=65535)
    controller_port: int = Field(ge=1, le=65535)


class ClusterMember(BaseModel):
    """One host's member file."""

    node_id: int = Field(ge=1)
    cluster_id: str
    admin_password: SecretStr
    voters: list[MemberAddress]

    @property
    def me(self) -> MemberAddress:
        return next(voter for voter in self.voters if voter.node_id == self.node_id)


def identity_path(settings: Settings) -> Path:
    return settings.run_dir / IDENTITY_FILE


def cluster_identity(settings: Settings) -> ClusterIdentity:
    """This bootstrap's cluster identity: made the first time, the same on every later run."""
    path = identity_path(settings)
    try:
        return ClusterIdentity.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        pass
    identity = ClusterIdentity(cluster_id=new_cluster_id(), admin_password=SecretStr(new_secret()))
    private_dir(path.parent)
    private_file(path).write_text(with_password(identity))
    return identity


def forget_cluster_identity(settings: Settings) -> None:
    identity_path(settings).unlink(missing_ok=True)


def with_password(document: ClusterIdentity | ClusterMember) -> str:
    """The JSON of a file that holds the super user's password (it is 0600)."""
    data = document.model_dump(mode="json")
    data["admin_password"] = document.admin_password.get_secret_value()
    return json.dumps(data, indent=2)


def member_path(settings: Settings) -> Path:
    return settings.home_dir / "secrets" / MEMBER_FILE


def _process_path(settings: Settings) -> Path:
    return settings.run_dir / f"{MEMBER_PROCESS}.json"


def _broker(settings: Settings, member: ClusterMember) -> KafkaBroker:
    me = member.me
    kafka = settings.kafka.model_copy(update={"host": me.host})
    return KafkaBroker(
        settings.home_dir / MEMBER_DIR,
        kafka,
        node_id=member.node_id,
        port=me.port,
        controller_port=me.controller_port,
        voters=[Voter(v.node_id, v.port, v.controller_port, v.host) for v in member.voters],
        cluster_id=member.cluster_id,
        admin_password=member.admin_password.get_secret_value(),
        log_file=settings.home_dir / "logs" / f"{MEMBER_PROCESS}.out",
    )


def _recorded(settings: Settings) -> ProcessRecord | None:
    try:
        return ProcessRecord.model_validate_json(_process_path(settings).read_bytes())
    except FileNotFoundError:
        return None


def start_member(settings: Settings, progress: Progress, *, wait: bool) -> bool:
    """Start this host's member unless it runs; with ``wait``, return once the cluster answers
    here (a majority of the members runs). False: it was running already."""
    member = ClusterMember.model_validate_json(member_path(settings).read_bytes())
    recorded = _recorded(settings)
    if recorded is not None and alive_process(recorded) is not None:
        progress(f"Kafka member {member.node_id} already runs")
        return False
    broker = _broker(settings, member)
    private_dir(settings.home_dir / "logs")
    progress(f"starting Kafka member {member.node_id} of {len(member.voters)} on {member.me.host}")
    broker.prepare(fresh=False)  # its log dir stays: a member started again rejoins and catches up
    # Not one of the home's managed processes (no AIOT_* in its environment): a platform's start
    # or stop on this host leaves it alone; ``stop_member`` stops it.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}
    broker.launch(detach=True, env=environment)
    assert broker.pid is not None
    private_dir(settings.run_dir)
    record = process_record(MEMBER_PROCESS, broker.pid, broker.command(), broker.log_file)
    private_file(_process_path(settings)).write_text(record.model_dump_json())
    if wait:
        progress("waiting for the Kafka cluster to answer")
        broker.wait(settings.bootstrap.ready_timeout_s)
    return True


def stop_member(settings: Settings, progress: Progress, *, purge: bool) -> list[str]:
    """Stop this host's member (if it runs); ``purge``: remove its log dir too (a destroyed
    cluster is gone; otherwise the member rejoins with it when started again)."""
    recorded = _recorded(settings)
    stopped = terminate_processes([recorded], progress) if recorded is not None else []
    _process_path(settings).unlink(missing_ok=True)
    if purge:
        shutil.rmtree(settings.home_dir / MEMBER_DIR, ignore_errors=True)
    return stopped
