"""``python -m deployer``."""

from deployer.service import main

main()
