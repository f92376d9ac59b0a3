"""The live dashboard (`agentcomm dashboard`, `agentcomm.dashboard.build_dashboard_app`)."""
