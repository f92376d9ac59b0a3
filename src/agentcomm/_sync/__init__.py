"""The machinery of `agentcomm.sync`: a loop thread, generic proxies, and the typed stubs."""
