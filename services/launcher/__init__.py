"""The local fleet: every MuFleet service as a separate process on loopback.

`topology.py` says WHAT runs (services, flags, who depends on whom); `local.py` says HOW
(child processes, readiness, status line, shutdown). Keeping the two apart lets the same
topology be launched differently (docker-compose mirrors it by hand).
"""
