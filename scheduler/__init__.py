"""The scheduler: end users' schedules of apps at locations, as persistent cron jobs, and their mail.

It owns the ``schedules`` and ``mails`` tables and APScheduler's ``scheduler_jobs`` table.
It reads no other domain's tables: it asks the app manager which app version to run
(``PickAppVersion``) and the device manager what a location lacks for it and its time zone
(``CheckLocation``). It talks to the deployer (``DeployApp`` / ``StopInstance`` over Kafka), listens to
``<prefix>.events.app-instances`` and sends mail (SMTP, or the outbox in the database).

* ``timetable`` — the schedule document (``ScheduleSpec``) and when its runs start and end in
  the location's time zone (daylight saving neither skips nor repeats a run);
* ``api`` — ``/api/schedules``, ``/api/instances`` and ``/api/mails`` on the front door;
* ``service`` — ``python -m scheduler``: the jobs, the firing, the mail;
* ``mail`` — the outbox and SMTP delivery;
* ``local_time`` — instants as people at a location read them (the CLI's tables, the mails).

Life of a schedule: ``POST /api/schedules`` (validated: app, location, the location has the
device types the app needs, times) ──▶ row ──▶ ``ScheduleChanged`` ──▶ a job in APScheduler
──▶ at each start ``DeployApp`` for a new instance, at its end ``StopInstance`` ──▶ the
deployer reports ``running`` ──▶ a mail with the app's address.
"""
