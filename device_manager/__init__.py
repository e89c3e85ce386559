"""The device manager: the registry of device types, locations and devices, their app bindings and states.

It owns the ``device_types``, ``locations``, ``devices``, ``device_bindings``,
``device_states`` and ``mqtt_credentials`` tables. The documents it stores are those of
``platform_sdk.device_documents`` (``DeviceType``, ``Location``, ``DeviceInstance``,
``DeviceBundle``); each row keeps its document as JSON beside the columns it is
looked up by. Its parts:

* ``models`` — the tables; ``registry`` — CRUD taking the session: create, read, list
  and delete types, locations and devices; ``register_bundle`` (a ``DeviceBundle``, all
  or nothing); ``effective_parameters`` (an instance's parameters, defaults filled);
  ``bind`` (pick devices of the types an app instance needs at its location; one device
  may serve many app instances); ``record_state`` / ``read_state`` (each device's latest
  reading or state, one row per device);
* ``states`` — a device's latest reading, frame summary or state: read from its topic on
  request (``read_latest``; the API does), and recorded one row per device by the service's
  ``StateRecorder`` every 30 s, shown once the topic holds nothing any more;
* ``api`` — ``/api/devices``, the routes the front door mounts: platform configurers
  register and delete, command controllers (over the bus, as an app does) and choose who
  may use a location; every other role reads (end users need locations and devices to
  schedule apps); a device is shown with its latest value (``states``). After a device is
  added or removed it tells the device-manager service
  with a ``messages.DeviceChanged`` on ``<prefix>.commands.device-manager``;
* ``python -m device_manager`` — the service: starts the simulators of simulated
  devices, follows ``DeviceChanged`` (and creates the devices' topics), records every
  device's latest reading or state (``states.StateRecorder``), and runs the MQTT gateway
  that brings real devices onto the bus;
* ``mqtt_auth`` — real devices' MQTT credentials (issued at registration, shown once, kept as
  Mosquitto's PBKDF2 hash in ``mqtt_credentials``) and Mosquitto's password and ACL files the
  service writes from the registry (each device only its own topics; the gateway ``<prefix>/#``);
* ``answers`` — what other domains ask about the registry, answered by the service on its
  command topic (nobody else reads these tables): the locations that can run an app
  (``FindLocations``), what one location lacks for it and its zone (``CheckLocation``),
  both for one user (a location a configurer restricted is not open to the others),
  which device types exist (``CheckDeviceTypes``).

Life of a registration: ``POST /api/devices`` (or ``/bulk``) ──▶ document validation
(422 naming each field) ──▶ names free (409 naming them), types and locations known,
parameters fit the type, a simulated device's type has a simulator (422 naming device,
field and reason) ──▶ rows committed ──▶ ``DeviceChanged("added")`` ──▶ 201. When the bus
cannot take the notice the rows are removed again and the answer is 503.
"""
