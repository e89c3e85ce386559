"""``python -m node_manager``: run the node manager until SIGTERM."""

from node_manager.service import main

main()
