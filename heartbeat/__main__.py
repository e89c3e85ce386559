"""``python -m heartbeat``: run the heartbeat monitor until SIGTERM."""

from heartbeat.monitor import main

main()
