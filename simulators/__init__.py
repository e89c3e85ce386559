"""Simulators: the six built-in simulated devices, a location's run as one managed service ``sim-<location>``.

It owns the device models (``simulators.models``, pure and seeded, no bus in them):

* sensors: ``camera`` (JPEG frames of scikit-image's photos, a person or an empty scene),
  ``light`` (lux on a day/night curve), ``temperature`` (a daily curve, optional humidity);
* controllers: ``fan`` (on, off, set_speed 0-5), ``display`` (show text in a colour, clear),
  ``ac`` (on, off, set setpoint and mode).

and ``simulators.service.SimulatorService`` (``python -m simulators``), which the device
manager places once per location with the location in ``AIOT_DEVICE__LOCATION`` and its
simulated devices (id, type, parameters each) in ``AIOT_DEVICE__SIMULATED``
(``AIOT_DEVICE__TIME_SCALE`` speeds up the day curves); it places it again when a device
of the location is added or removed. It owns no table and no HTTP; it talks to the bus only, and only
through the SDK's device side (``platform_sdk.devices``), exactly as a real device using
the SDK would, so apps and the device manager cannot tell the two apart.

A reading: every 1/rate_hz seconds (camera: 1/fps) the model reads the simulated clock
and gives values (or a frame, JPEG-encoded by ``platform_sdk.codec``);
``SensorPublisher`` publishes a ``Reading`` (or a ``Frame`` with the image bytes) on
``<prefix>.devices.<id>.data``, keyed by the device id.

A command: an app's ``DeviceClient.send_controller`` sends a ``DeviceCommand`` to
``<prefix>.devices.<id>.commands``; ``ControllerEndpoint`` hands it to the model's
``apply``, which checks it against the device type and the simulator's own rules and
returns the new state, or raises ``ValidationFailed`` naming each bad field; the endpoint
replies with the ``DeviceState`` (``accepted=False`` and the reason when refused, the state
unchanged) and publishes it on ``<prefix>.devices.<id>.state``.
"""
