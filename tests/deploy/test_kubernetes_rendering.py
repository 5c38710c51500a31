"""kubernetes/ is a rendering of the fleet's program (services/launcher/topology.py): the committed
base and overlays must be exactly what the Kubernetes renderer writes."""

from __future__ import annotations

from services.launcher.kubernetes import OUT, main, rendered_files, stale

REGENERATE = "python -m services.launcher.kubernetes --write"


def test_committed_manifests_are_the_programs_rendering():
    differ = stale(rendered_files())
    assert not differ, (
        f"{len(differ)} file(s) under kubernetes/ differ from the rendering of the fleet's program "
        f"(services/launcher/topology.py). Edit the program, not the files, then regenerate: "
        f"`{REGENERATE}`.\n" + "\n".join(differ.values()))


def test_check_of_the_command_line():
    assert main(["--check"]) == 0


def test_a_changed_file_is_reported_with_its_difference(tmp_path):
    files = rendered_files()
    path = OUT / "base" / "agent.yaml"
    text = files[path]
    copy = tmp_path / "agent.yaml"
    copy.write_text(text.replace("replicas: 1", "replicas: 3", 1))
    differ = stale({copy: text})
    assert list(differ) == [copy] and "-  replicas: 3" in differ[copy] and "+  replicas: 1" in differ[copy]
