"""``python -m device_manager``."""

from device_manager.service import main

main()
