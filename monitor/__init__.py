"""MuFleet's monitoring dashboard (Flask): `python -m monitor --help`; see docs/monitor.md."""
