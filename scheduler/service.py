"""The scheduler as a platform service: end users' schedules become persistent cron jobs.

    /api/schedules (front door) ──▶ ``schedules`` row ──▶ ScheduleChanged on <prefix>.commands.scheduler
    ScheduleChanged ──▶ the schedule's start job in APScheduler (job store: table ``scheduler_jobs``
                        of the platform database, so jobs survive a restart), paused, resumed or removed
    start job fires ──▶ the run it starts (``timetable.run_for_fire_time``): not ended yet?
                        ──▶ PickAppVersion (the app manager, request/reply): the version to run
                        ──▶ DeployApp(instance ``<schedule>-<run start>``) to the deployer
                        ──▶ a one-off stop job at the run's end
                        app manager or Kafka not answering ──▶ a one-off retry job after
                        ``scheduler.start_retry_s`` (5 s, 15 s, ... 120 s), again until it starts
                        or its window is over (then recorded as missed, with why)
                    ──▶ ended already (the scheduler was down through it) ──▶ recorded as missed
    stop job fires  ──▶ StopInstance to the deployer
    <prefix>.events.app-instances ──▶ InstanceEvent running / moved / failed ──▶ a mail to its end user
                                      (``scheduler.mail``: SMTP, or the outbox when none is set)

Exactly once: APScheduler may fire a start again after a crash between firing and recording
it; the instance id is derived from the schedule and the run's start, and the deployer starts
an instance id once, so a start fired twice deploys once. Misfires: jobs have no grace limit
of their own and hand every missed fire time to ``fire_start``; the policy is ours — the one
run that has not ended yet starts late, once; runs that are over are recorded as missed
(``docs/scheduling.md``).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from app_manager.messages import AppVersion, PickAppVersion, app_manager_topic
from deployer.messages import DeployApp, InstanceEvent, StopInstance
from platform_core.db import Database
from platform_core.service import PeriodicTask, Service
from platform_sdk.bus import ConsumerLoop, Producer, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.errors import PlatformError, Timeout, Unavailable
from platform_sdk.settings import get_settings
from scheduler import timetable
from scheduler.mail import (
    Mailer,
    instance_failed_mail,
    instance_moved_mail,
    instance_started_mail,
    local_mailbox,
)
from scheduler.messages import ScheduleChanged
from scheduler.models import ScheduleRow

log = logging.getLogger(__name__)
JOB_TABLE = "scheduler_jobs"


def start_job_id(schedule_id: str) -> str:
    return f"start-{schedule_id}"


def retry_job_id(schedule_id: str) -> str:
    return f"retry-{schedule_id}"


def stop_job_id(instance_id: str) -> str:
    return f"stop-{instance_id}"


def instance_id_for(schedule_id: str, run_start: datetime) -> str:
    """The same run of a schedule always gets the same instance id: the deployer starts it once."""
    return f"{schedule_id}-{run_start.astimezone(UTC):%Y%m%d%H%M%S}"


@dataclass(frozen=True)
class JobContext:
    """What the executor hands a job besides its stored arguments."""

    service: SchedulerService
    fire_times: list[datetime]


def start_job(schedule_id: str, context: JobContext | None = None) -> None:
    """A schedule's start job (its stored form: this function and the schedule id)."""
    if context is None:
        raise RuntimeError("scheduler jobs run through the scheduler service's executor")
    context.service.fire_start(schedule_id, context.fire_times)


def retry_start_job(
    schedule_id: str, run_start: str, attempt: int, why: str, context: JobContext | None = None
) -> None:
    """The one-off job that tries a run's start again (``run_start`` ISO 8601, ``attempt`` from 1)."""
    if context is None:
        raise RuntimeError("scheduler jobs run through the scheduler service's executor")
    context.service.retry_start(schedule_id, datetime.fromisoformat(run_start), attempt, why)


def stop_job(instance_id: str, context: JobContext | None = None) -> None:
    """The one-off job that stops an instance at the end of its run."""
    if context is None:
        raise RuntimeError("scheduler jobs run through the scheduler service's executor")
    context.service.fire_stop(instance_id)


class _ServiceExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs stored jobs with the running service and every fire time they are due for.

    The job store keeps only a function and plain arguments; the executor adds the
    service, so nothing global is needed to reach it.
    """

    def __init__(self, service: SchedulerService) -> None:
        super().__init__()
        self._service = service
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="aiot-scheduler-job")

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        def run() -> None:
            try:
                job.func(*job.args, context=JobContext(self._service, list(run_times)))
            except BaseException as exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, [])

        self._pool.submit(run)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)


class SchedulerService(Service):
    name = "scheduler"

    def on_start(self) -> None:
        bus = self.sdk.bus
        self.database = Database.from_settings(self.settings)
        self.own(self.database)
        self.database.ensure_schema()
        bus.ensure_topics([bus.topics.scheduler, bus.topics.deployer, bus.topics.app_instances])
        self.producer: Producer = bus.producer()
        self.requester = Requester(bus)
        self.requester.start()
        self.own(self.requester)
        self.mailer = Mailer(self.settings.mail)
        self._executor = _ServiceExecutor(self)
        self.jobs = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.database.engine, tablename=JOB_TABLE)},
            executors={"default": self._executor},
            # Our misfire policy needs every missed fire time (fire_start records the ones it skips).
            job_defaults={"coalesce": False, "misfire_grace_time": None, "max_instances": 1},
            timezone=UTC,
        )
        self.jobs.start(paused=True)
        self._reconcile()
        self.jobs.resume()
        commands = ConsumerLoop(
            bus, [bus.topics.scheduler], group=f"{bus.topics.prefix}.scheduler", name=self.service_id
        )
        commands.add_handler(ScheduleChanged, self.on_change)
        commands.start()
        self.own(commands)
        events = ConsumerLoop(
            bus, [bus.topics.app_instances], group=f"{bus.topics.prefix}.scheduler.mail", name="instance-mail"
        )
        events.add_handler(InstanceEvent, self.on_instance)
        events.start()
        self.own(events)
        if self.settings.mail.smtp_host:
            retry = PeriodicTask(
                "mail-retry", self.settings.scheduler.mail_retry_interval_s, self._deliver_pending
            )
            retry.start()
            self.own(retry)

    def stop(self) -> None:
        jobs = getattr(self, "jobs", None)
        if jobs is not None and jobs.running:
            # A running job may add a job (a run's stop, a retry): it needs the job store's lock,
            # which APScheduler's shutdown holds while it waits for the executor. So no new job
            # is handed out, and the running one ends, before the shutdown.
            jobs.pause()
            self._executor.shutdown(wait=True)
            jobs.shutdown(wait=True)
        super().stop()

    # planning -----------------------------------------------------------------------------
    def on_change(self, change: ScheduleChanged, _envelope: Envelope) -> None:
        with self.database.session() as session:
            row = session.get(ScheduleRow, change.schedule_id)
            if row is None:
                log.warning("schedule %s is gone; nothing to plan", change.schedule_id)
                return
            self._plan(row)

    def _reconcile(self) -> None:
        """Jobs for every live schedule, and every run that should be running started (again).

        A scheduler stopped between firing a start and sending its ``DeployApp`` leaves a run
        APScheduler considers done: the open run of each schedule is sent once more at start,
        and the deployer, which starts an instance id once, makes that harmless.
        """
        with self.database.session() as session:
            live = [
                (row.schedule_id, row.status)
                for row in session.query(ScheduleRow).filter(
                    ScheduleRow.status.in_(("active", "paused", "finished"))
                )
            ]
        for schedule_id, status in live:
            if status != "finished":
                # One schedule per transaction: APScheduler writes its job store on a connection
                # of its own, which must not wait on a write of ours (SQLite has one writer).
                with self.database.session() as session:
                    row = session.get(ScheduleRow, schedule_id)
                    if row is not None:
                        self._plan(row)
            if status != "paused":
                try:
                    self._start_runs(schedule_id, fire_times=[], now=datetime.now(UTC))
                except PlatformError as exc:
                    log.error("schedule %s: cannot start its open run: %s", schedule_id, exc)

    def _plan(self, row: ScheduleRow) -> None:
        job_id = start_job_id(row.schedule_id)
        if row.status not in ("active", "paused"):
            try:
                self.jobs.remove_job(job_id)
                log.info("schedule %s %s: its job is removed", row.schedule_id, row.status)
            except JobLookupError:
                pass
            return
        if self.jobs.get_job(job_id) is None:
            trigger = timetable.ScheduleTrigger(row.spec, row.timezone, row.created_at)
            self.jobs.add_job(
                start_job,
                trigger=trigger,
                args=[row.schedule_id],
                id=job_id,
                name=f"{row.app_name} at {row.location}",
            )
            next_start = self._next_start(job_id)
            if next_start is None:
                self.jobs.remove_job(job_id)
                row.status = "finished"
                _note(row, "missed", "its runs ended before the scheduler could plan them")
                log.warning("schedule %s: nothing left to run", row.schedule_id)
                return
            log.info("schedule %s planned: next start %s", row.schedule_id, next_start)
        job = self.jobs.get_job(job_id)
        if job is None:
            return
        if row.status == "paused" and job.next_run_time is not None:
            self.jobs.pause_job(job_id)
        elif row.status == "active" and job.next_run_time is None:
            # Only a paused job is resumed: resuming recomputes the next run from now, which
            # would drop the fire times a restarted scheduler still owes (fire_start records them).
            self.jobs.resume_job(job_id)

    def _next_start(self, job_id: str) -> datetime | None:
        job = self.jobs.get_job(job_id)
        return job.next_run_time if job is not None else None

    # firing -------------------------------------------------------------------------------
    def fire_start(self, schedule_id: str, fire_times: list[datetime]) -> None:
        """A start came (with any missed while down): deploy the run still open, plan its stop."""
        self._start_runs(schedule_id, fire_times, datetime.now(UTC))

    def retry_start(self, schedule_id: str, run_start: datetime, attempt: int, why: str) -> None:
        """A retry job came: start the run again, or record it missed if its window is over."""
        self._start_runs(
            schedule_id,
            [run_start],
            datetime.now(UTC),
            attempt=attempt,
            missed_because=f"could not start: {why}",
        )

    def _start_runs(
        self,
        schedule_id: str,
        fire_times: list[datetime],
        now: datetime,
        *,
        attempt: int = 0,
        missed_because: str = "ended while the scheduler was down",
    ) -> None:
        """Start the schedule's open run (the deployer starts an instance id once); record what happened.

        Without ``fire_times``, the run in progress, if any (a starting scheduler's catch-up).
        Three steps, so that no database transaction is open while Kafka and APScheduler's job
        store are written: read what to do, do it, then record it. A start the app manager or
        Kafka did not answer is tried again later (``_retry_later``); ``attempt`` counts the tries.
        """
        with self.database.session() as session:
            row = session.get(ScheduleRow, schedule_id)
            if row is None or row.status not in ("active", "finished"):
                return
            if fire_times and row.status != "active" and not attempt:
                return  # paused since it fired (a retry's run may be the last: finished is fine)
            plan = _runs_to_start(row, fire_times, now)
            session.expunge(row)
        request: DeployApp | None = None
        delayed: str | None = None
        try:
            request = self._deploy_request(row, plan.open_run) if plan.open_run else None
            if request is not None:
                self.producer.send(self.sdk.bus.topics.deployer, request, key=request.instance_id)
                if self.producer.flush(10):
                    raise Unavailable(f"could not send the start of {request.instance_id}; is Kafka up?")
        except (Timeout, Unavailable) as exc:  # passing: asked again later
            assert plan.open_run is not None
            request, delayed = None, str(exc)
            self._retry_later(schedule_id, plan.open_run, attempt + 1, delayed)
        if request is not None and plan.open_run is not None:
            self.jobs.add_job(
                stop_job,
                trigger=DateTrigger(plan.open_run.end),
                args=[request.instance_id],
                id=stop_job_id(request.instance_id),
                replace_existing=True,
                name=f"stop {request.instance_id}",
            )
            log.info("schedule %s: started %s until %s", schedule_id, request.instance_id, plan.open_run.end)
        with self.database.session() as session:
            row = session.get(ScheduleRow, schedule_id)
            if row is None:
                return
            for run in plan.missed:
                _note(row, "missed", f"the run of {run.start:%Y-%m-%d %H:%M} UTC {missed_because}")
                log.warning(
                    "schedule %s: missed the run of %s (it ended at %s)", schedule_id, run.start, run.end
                )
            if delayed is not None and attempt == 0 and plan.open_run is not None:
                _note(row, "delayed", f"the run of {plan.open_run.start:%Y-%m-%d %H:%M} UTC: {delayed}")
            if plan.finished and row.status == "active":
                row.status = "finished"  # no more starts; the last instance runs to its end
            if request is not None and plan.open_run is not None:
                started = [entry.get("detail", "") for entry in json.loads(row.history or "[]")]
                if not any(detail.startswith(request.instance_id) for detail in started):
                    late = (now - plan.open_run.start).total_seconds()
                    _note(row, "started", request.instance_id + (f" ({late:.0f} s late)" if late > 5 else ""))

    def _retry_later(self, schedule_id: str, run: timetable.Run, attempt: int, why: str) -> None:
        """Plan the ``attempt``-th try at starting ``run`` (``scheduler.start_retry_s``; the last repeats)."""
        waits = self.settings.scheduler.start_retry_s
        wait = waits[min(attempt, len(waits)) - 1]
        log.warning(
            "schedule %s: the start of its run failed (%s); trying again in %gs", schedule_id, why, wait
        )
        self.jobs.add_job(
            retry_start_job,
            trigger=DateTrigger(datetime.now(UTC) + timedelta(seconds=wait)),
            args=[schedule_id, run.start.isoformat(), attempt, why],
            id=retry_job_id(schedule_id),
            replace_existing=True,
            name=f"retry the start of {schedule_id}",
        )

    def _deploy_request(self, row: ScheduleRow, run: timetable.Run) -> DeployApp:
        """The run's ``DeployApp``, with the version the app manager picks (``NotFound`` when gone)."""
        version = self.requester.request(
            app_manager_topic(self.sdk.bus.topics),
            PickAppVersion(app=row.app_id, version=row.version),
            AppVersion,
            timeout=self.settings.scheduler.app_manager_timeout_s,
        )
        return DeployApp(
            instance_id=instance_id_for(row.schedule_id, run.start),
            app_id=row.app_id,
            version=version.version,
            artifact_key=version.artifact_key,
            artifact_sha256=version.sha256,
            manifest=version.manifest,
            location=row.location,
            owner=row.owner,
            app_owner=version.owner,
            email=row.email,
            schedule_id=row.schedule_id,
            stop_at=run.end,
            timezone=row.timezone,
        )

    def fire_stop(self, instance_id: str) -> None:
        """A run's window ended: stop its instance (stopping a stopped one changes nothing)."""
        self.producer.send(
            self.sdk.bus.topics.deployer,
            StopInstance(instance_id=instance_id, reason="its scheduled window ended"),
            key=instance_id,
        )
        self.producer.flush(5)
        log.info("window of %s ended: stopping it", instance_id)

    # mail ---------------------------------------------------------------------------------
    def on_instance(self, event: InstanceEvent, _envelope: Envelope) -> None:
        if event.status == "running" and event.moved:
            subject, body = instance_moved_mail(
                event.app, event.version, event.location, event.instance_id, event.url
            )
        elif event.status == "running":
            subject, body = instance_started_mail(
                event.app,
                event.version,
                event.location,
                event.instance_id,
                event.url,
                event.stop_at,
                timezone=event.timezone,
            )
        elif event.status == "failed":
            subject, body = instance_failed_mail(
                event.app, event.version, event.location, event.instance_id, event.detail
            )
        else:
            return
        recipient = event.email or local_mailbox(event.owner)
        try:
            self.mailer.send_once(self.database, recipient, subject, body, instance_id=event.instance_id)
        except PlatformError as exc:
            log.error("cannot mail %s about %s: %s", recipient, event.instance_id, exc)

    def _deliver_pending(self) -> None:
        self.mailer.deliver_pending(self.database)


@dataclass(frozen=True)
class RunPlan:
    """What a firing (or a starting scheduler) does for one schedule."""

    open_run: timetable.Run | None
    missed: list[timetable.Run]
    finished: bool


def _runs_to_start(row: ScheduleRow, fire_times: list[datetime], now: datetime) -> RunPlan:
    """The run to start (the one not ended yet), the runs missed, and whether the schedule is over."""
    spec = timetable.ScheduleSpec.model_validate_json(row.spec)
    if fire_times:
        runs = [timetable.run_for_fire_time(spec, row.timezone, time, row.created_at) for time in fire_times]
    else:
        current = timetable.upcoming_run(spec, row.timezone, now, row.created_at)
        runs = [current] if current is not None and current.start <= now else []
    open_runs = [run for run in runs if timetable.still_worth_starting(run, now)]
    missed = [run for run in runs if not timetable.still_worth_starting(run, now)]
    last = runs[-1] if runs else None
    finished = last is not None and timetable.next_run(spec, row.timezone, last.start, row.created_at) is None
    return RunPlan(open_runs[-1] if open_runs else None, missed, finished)


def _note(row: ScheduleRow, what: str, detail: str) -> None:
    history: list[dict[str, Any]] = json.loads(row.history or "[]")
    history.append({"at": datetime.now(UTC).isoformat(), "event": what, "detail": detail})
    row.history = json.dumps(history[-50:])
    row.updated_at = datetime.now(UTC)


def main() -> None:
    SchedulerService(get_settings()).run()
