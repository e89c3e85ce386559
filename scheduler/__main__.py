"""``python -m scheduler``."""

from scheduler.service import main

main()
