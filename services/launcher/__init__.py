"""The fleet's program and its launchers.

`program.py` is the vocabulary (a `Program` of `Node`s that refer to one another through
handles); `topology.py` is MuFleet's fleet written in it, once (`build_program`). Launchers
render that one definition: `local.py` starts it as processes on loopback (`make run`,
`python -m services.launcher`), `compose.py` writes docker-compose.yml and its GPU override
(`python -m services.launcher.compose --write`). WHAT runs is never written twice.
"""
