"""The Dockerfile's rules, checked on its parsed instructions (there is no Docker engine here to build it):
multi-stage, the runtime stage runs as an unprivileged user with a health check that calls the CLI, only
the files the image needs are sent to the build, and no secret is baked in. Each rule is shown to bite on
a broken copy."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SECRETISH = re.compile(r"(APP_?KEY|APP_?SECRET|PASSWORD|TOKEN)", re.IGNORECASE)


def problems(text: str) -> list[str]:
    # From a file object: given a path (the default is "."), the parser would write content back to it.
    instructions = DockerfileParser(fileobj=io.StringIO(text)).structure
    found: list[str] = []
    stages = [i for i in instructions if i["instruction"] == "FROM"]
    if len(stages) < 2:
        found.append("not multi-stage")
    last_from = max(i["startline"] for i in stages) if stages else -1
    runtime = [i for i in instructions if i["startline"] > last_from]
    users = [i["value"].split(":")[0] for i in runtime if i["instruction"] == "USER"]
    if not users or users[-1] in ("0", "root"):
        found.append("the runtime stage runs as root")
    checks = [i["value"] for i in runtime if i["instruction"] == "HEALTHCHECK"]
    if not checks or "observer" not in checks[-1] or "healthcheck" not in checks[-1]:
        found.append("no health check calling `observer healthcheck`")
    copies_from_build = [i for i in runtime if i["instruction"] == "COPY" and "--from=" in i["value"]]
    if not copies_from_build:
        found.append("the runtime stage does not copy from the build stage")
    found.extend(
        f"a secret-looking {i['instruction']} on line {i['startline'] + 1}"
        for i in instructions
        if i["instruction"] in ("ENV", "ARG") and SECRETISH.search(i["value"])
    )
    if not any(i["instruction"] == "ENTRYPOINT" and "observer" in i["value"] for i in runtime):
        found.append("the entrypoint is not the observer CLI")
    return found


def test_the_dockerfile_follows_the_rules() -> None:
    assert problems(DOCKERFILE.read_text()) == []


def drop_user(t: str) -> str:
    return re.sub(r"^USER .*$", "", t, flags=re.M)


def root_user(t: str) -> str:
    return re.sub(r"^USER .*$", "USER root", t, flags=re.M)


def no_healthcheck(t: str) -> str:
    return re.sub(r"^HEALTHCHECK .*$", "", t, flags=re.M)


def single_stage(t: str) -> str:
    return t[t.index("FROM python:3.11-slim-bookworm AS runtime") :].replace("COPY --from=build", "COPY")


def baked_secret(t: str) -> str:
    return t.replace("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 OBSERVER_KIS_APP_SECRET=oops")


@pytest.mark.parametrize("breakage", [drop_user, root_user, no_healthcheck, single_stage, baked_secret])
def test_each_rule_bites_on_a_broken_copy(breakage: Callable[[str], str]) -> None:
    broken = breakage(DOCKERFILE.read_text())
    assert broken != DOCKERFILE.read_text()
    assert problems(broken), f"{breakage.__name__} went unnoticed"


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*", "ignore everything, then admit what the image needs"
    admitted = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "app", "schemas", "topics"}
    copied = set()
    for i in DockerfileParser(fileobj=io.StringIO(DOCKERFILE.read_text())).structure:
        if i["instruction"] == "COPY" and "--from=" not in i["value"]:
            copied |= {src.rstrip("/") for src in i["value"].split()[:-1]}
    assert copied <= admitted, f"COPY of files the context does not send: {copied - admitted}"
