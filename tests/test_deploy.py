"""The deployment examples (deploy/compose.yaml, deploy/kubernetes.yaml, deploy/nginx.conf) parse, and every
freshrec command in them is one the CLI accepts: its command exists, each option is one of that command's,
each stream URL parses. Docker and Kubernetes do not run on the build machine; this is what keeps the files
true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
import yaml

from freshrec.cli import app
from freshrec.errors import ConfigError
from freshrec.sources.streams import StreamAddress

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CLI = typer.main.get_command(app)


def compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return {name: service["command"] for name, service in services.items() if "command" in service}


def kubernetes_commands() -> dict[str, list[str]]:
    commands = {}
    for document in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()):
        if document["kind"] != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            commands[f"{document['metadata']['name']}/{container['name']}"] = container["command"]
    return commands


def freshrec_commands() -> list[tuple[str, list[str]]]:
    found = {**compose_commands(), **kubernetes_commands()}
    return [(name, command) for name, command in found.items() if command[0] == "freshrec"]


def check_against_cli(command: list[str]) -> None:
    """Raises the CLI's own error unless it parses `command` (the command, its options, their values),
    without running it; every stream URL in it must parse too."""
    sub = CLI.commands.get(command[1])  # type: ignore[attr-defined]
    assert sub is not None, f"no command {command[1]!r}"
    parsed = sub.make_context(command[1], list(command[2:]))
    for name in ("source", "to"):
        if parsed.params.get(name):
            StreamAddress.parse(parsed.params[name])


def test_the_examples_run_the_trainer_and_replicas_on_one_store_and_one_stream():
    commands = dict(freshrec_commands())
    assert len(commands) >= 5
    compose = compose_commands()
    serving = [command for name, command in compose.items() if command[:2] == ["freshrec", "serve"]]
    assert len(serving) == 2 and compose["trainer"][:2] == ["freshrec", "train"]
    for command in commands.values():
        assert "--source" in command and "--store" in command
    stores = {command[command.index("--store") + 1] for command in commands.values()}
    assert stores == {"/data/store"}
    upstreams = re.findall(r"server (\S+):8000;", (DEPLOY / "nginx.conf").read_text())
    assert sorted(upstreams) == sorted(name for name, c in compose.items() if c[:2] == ["freshrec", "serve"])


@pytest.mark.parametrize(("name", "command"), freshrec_commands(), ids=[n for n, _ in freshrec_commands()])
def test_every_command_is_one_the_cli_accepts(name, command):
    check_against_cli(command)


def test_the_check_catches_a_wrong_option():
    with pytest.raises(Exception, match="No such option: --nproc"):
        check_against_cli(["freshrec", "train", "--nproc", "2"])
    with pytest.raises(Exception, match="valid integer"):
        check_against_cli(["freshrec", "serve", "--port", "eighty"])
    with pytest.raises(ConfigError, match="unknown scheme"):
        check_against_cli(["freshrec", "serve", "--source", "kafak://k:9092/events"])
