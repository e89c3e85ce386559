"""``python -m simulators``: play the device in ``AIOT_DEVICE__*`` until SIGTERM."""

from simulators.service import SimulatorService

SimulatorService().run()
