"""``python -m service_agent``: run this node's agent until SIGTERM (its services stop with it)."""

from service_agent.agent import ServiceAgent

ServiceAgent().run()
