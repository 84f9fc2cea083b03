"""The deployment files agree with the code they deploy, checked offline.

No image can be built and no cluster reached here, so everything that can be known without
them is checked: the compose file against the compose-spec JSON schema (check-jsonschema's
vendored copy), the Kubernetes manifests against the API's schemas (kubernetes-validate, in
strict mode), the Dockerfiles with hadolint, and every port, probe path, environment
variable, metric name, model server flag and drain timeout against voxline's own code and
settings: a renamed route, metric, variable or setting breaks a test here.
"""

from __future__ import annotations

import ast
import io
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.conftest import ROOT
from voxline.config import ServerConfig, load_config
from voxline.engine_config import VLLMConfig
from voxline.personas import Persona, load_persona

DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
IMAGE_ROOT = PurePosixPath("/opt/voxline")
"""Where both images put the repository (their WORKDIR)."""
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
DRAIN_FIELD = "drain_timeout_secs"
"""The ServerConfig field the grace periods must outlast (read from the model, not assumed)."""
GOODBYE_MARGIN_SECS = 30
"""What the drain's goodbyes may take after drain_timeout_secs (docs/operations.md)."""
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
LIBRARY_ENV = {
    "HF_TOKEN": "huggingface_hub: the token for gated checkpoints",
    "HF_HOME": "huggingface_hub: where downloaded weights are kept",
    "PGPASSWORD": "libpq (psycopg): the password of a records_url that names none",
}
"""Variables the deploy files set for libraries voxline runs, not for voxline's own code."""


# --- what the code says -----------------------------------------------------------------


@cache
def app_routes() -> dict[str, set[str]]:
    """Path -> methods ("WS" for websockets) of the app `voxline serve` runs."""
    from voxline.bot.runtime import Runtime
    from voxline.server.app import create_app
    from voxline.server.serve import load_personas

    config_path = DOCKER / "voxline.cpu.yaml"
    config = load_config(config_path)
    app = create_app(config, load_personas(config, config_path), Runtime(config))
    routes: dict[str, set[str]] = {}
    for route in app.routes:
        methods = getattr(route, "methods", None) or {"WS"}
        routes.setdefault(route.path, set()).update(methods)
    return routes


@cache
def exported_metrics() -> frozenset[str]:
    """Every series name the server's /metrics can export (counters with ``_total``)."""
    from voxline.bot.runtime import Runtime
    from voxline.server.admission import Admission
    from voxline.server.metrics import metrics_registry, render_metrics

    runtime = Runtime(ServerConfig())
    text = render_metrics(metrics_registry(runtime, Admission(4))).decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)  # a counter's family is written with its _total here
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return frozenset(names)


@cache
def env_names_in_code() -> frozenset[str]:
    """Every string constant shaped like an environment variable in voxline's own code."""
    names: set[str] = set()
    for path in (ROOT / "voxline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", node.value)
            ):
                names.add(node.value)
    return frozenset(names)


def required_env() -> set[str]:
    """What a voxline behind a balancer must be given: the shared stream key and Twilio's."""
    from voxline.transports.twilio_webhook import STREAM_SECRET_ENV

    twilio = {"TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID"}
    assert twilio <= env_names_in_code(), "voxline no longer reads Twilio's credentials so"
    return {STREAM_SECRET_ENV, *twilio}


def serve_default_port() -> int:
    from voxline.bot.cli import _parser

    return _parser().parse_args(["serve"]).port


def drain_timeout(config: ServerConfig) -> float:
    assert DRAIN_FIELD in ServerConfig.model_fields, f"ServerConfig has no {DRAIN_FIELD}"
    return float(getattr(config, DRAIN_FIELD))


def vllm_flags(*, tool_call_parser: str) -> dict[str, str | None]:
    """The flags voxline's own vLLM launcher gives a GPU server (host and port aside)."""
    from voxline.engines.vllm import VLLMServer

    command = VLLMServer(
        "some/model",
        python=Path("python"),
        model_alias="alias",
        port=8000,
        device="cuda",
        tool_call_parser=tool_call_parser,
    ).command()
    flags = parse_flags(command[command.index("-m") + 2 :])
    # The deploy files pin vLLM images older than 0.32, which have no --tool-strict-level
    # (their GPU models write valid arguments without it; docs/deploy.md says so).
    ignored = ("--host", "--port", "--tool-strict-level")
    return {flag: value for flag, value in flags.items() if flag not in ignored}


def parse_flags(args: list[str]) -> dict[str, str | None]:
    """``--flag value``, ``--flag=value`` and bare ``--flag`` as one mapping."""
    flags: dict[str, str | None] = {}
    index = 0
    while index < len(args):
        arg = str(args[index])
        assert arg.startswith("--"), f"not a flag: {arg!r} in {args}"
        if "=" in arg:
            flag, value = arg.split("=", 1)
            flags[flag] = value
        elif index + 1 < len(args) and not str(args[index + 1]).startswith("--"):
            flags[arg] = str(args[index + 1])
            index += 1
        else:
            flags[arg] = None
        index += 1
    return flags


# --- the files ----------------------------------------------------------------------------


def in_repo(image_path: str | PurePosixPath) -> Path:
    """The repository file the images hold at ``image_path`` (under /opt/voxline)."""
    relative = PurePosixPath(image_path).relative_to(IMAGE_ROOT)
    return ROOT / relative


@cache
def dockerfile(kind: str) -> tuple[tuple[str, str], ...]:
    """(instruction, value) of every instruction of a Dockerfile, continuations joined."""
    content = DOCKERFILES[kind].read_bytes()
    parser = DockerfileParser(fileobj=io.BytesIO(content), env_replace=False)
    return tuple(
        (item["instruction"], item["value"])
        for item in parser.structure
        if item["instruction"] != "COMMENT"
    )


def instructions(kind: str, name: str) -> list[str]:
    return [value for instruction, value in dockerfile(kind) if instruction == name]


def dockerfile_env(kind: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in instructions(kind, "ENV"):
        for pair in shlex.split(value):
            key, _, setting = pair.partition("=")
            env[key] = setting
    return env


def dockerfile_args(kind: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for value in instructions(kind, "ARG"):
        key, _, default = value.partition("=")
        args[key] = default.strip('"')
    return args


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not the exec form: {value}"
    return parsed


def dockerignore_patterns() -> list[re.Pattern[str]]:
    """The patterns of ``.dockerignore`` as regular expressions (``**``, ``*``, ``?``)."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip().lstrip("/")
        if not pattern or pattern.startswith("#"):
            continue
        assert not pattern.startswith("!"), "exceptions are not read here"
        regex = ""
        for token in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        patterns.append(re.compile(regex))
    return patterns


def ignored(relative: str) -> bool:
    """Whether ``.dockerignore`` leaves this path (or a folder above it) out of the context."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    return any(regex.fullmatch(prefix) for regex in dockerignore_patterns() for prefix in prefixes)


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, resource) of every Kubernetes resource the kustomization applies."""
    resources = []
    for name in read_yaml(K8S / "kustomization.yaml")["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document:
                resources.append((name, document))
    return tuple(resources)


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in docker/k8s"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def k8s_config_file(tmp_path: Path) -> Path:
    """The ConfigMap's voxline.yaml as a file whose image paths point into the repository."""
    text = resource("ConfigMap", "voxline-config")["data"]["voxline.yaml"]
    path = tmp_path / "voxline.yaml"
    path.write_text(text.replace(f"{IMAGE_ROOT}/", f"{ROOT}/"))
    return path


@cache
def compose() -> dict[str, Any]:
    return read_yaml(DOCKER / "compose.yaml")


def env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and ${VAR:?error}."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        given = env.get(name)
        if operator == ":-":
            return given or argument
        if operator == "-":
            return argument if given is None else given
        if operator == ":?":
            assert given, f"${{{name}}} must be set: {argument}"
        return given or ""

    return VARIABLE.sub(value, text)


def seconds(duration: str | int | float) -> float:
    """A compose duration (``330s``, ``5m``, ``1h30m``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def persona_of(config_path: Path) -> Persona:
    config = load_config(config_path)
    assert config.default_persona is not None
    return load_persona(config.default_persona)


# --- Dockerfiles --------------------------------------------------------------------------


def install_flags(kind: str) -> list[str]:
    """The flags a Dockerfile gives scripts/install.sh, build arguments at their defaults."""
    runs = instructions(kind, "RUN")
    installs = [run for run in runs if "install.sh" in run]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0].split("&&")[0])
    words = [word for word in words if not word.startswith("--mount=")]
    assert words[:2] == ["bash", "scripts/install.sh"], words
    args = dockerfile_args(kind)
    flags: list[str] = []
    for word in words[2:]:
        argument = re.fullmatch(r"\$\{?(\w+)\}?", word)
        flags += shlex.split(args[argument.group(1)]) if argument else [word]
    return flags


def run_install_sh(tmp_path: Path, flags: list[str]) -> dict[str, list[str]]:
    """What scripts/install.sh runs with ``flags``, in a copy whose Pythons only log.

    Every Debian package counts as installed (a stub ``dpkg``), and ``.venv/bin/python``
    and ``.venv-vllm/bin/python`` are scripts that write their arguments to a log: so
    the script's own decisions (extras, whether vLLM is installed) are observed without
    installing anything.
    """
    import os
    import shutil

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install.sh", repo / "scripts" / "install.sh")
    logs = {venv: tmp_path / f"{venv}.log" for venv in (".venv", ".venv-vllm")}
    for venv, log in logs.items():
        python = repo / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
        python.chmod(0o755)
        log.touch()
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "dpkg").write_text("#!/bin/sh\nexit 0\n")
    (stubs / "dpkg").chmod(0o755)
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "install.sh"), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {venv: log.read_text().splitlines() for venv, log in logs.items()}


def installed_extras(calls: list[str]) -> set[str]:
    (editable,) = [call for call in calls if "install" in call and " -e " in call]
    match = re.search(r"\.\[([\w,-]+)\]", editable)
    assert match, editable
    return set(match.group(1).split(","))


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_installs_with_the_script_ci_runs(kind: str, tmp_path: Path):
    flags = install_flags(kind)
    # CI's own install is the same script (.ci/run), so a broken install fails CI first.
    assert "bash scripts/install.sh" in (ROOT / ".ci" / "run").read_text()
    # The image installs nothing with pip besides what install.sh does.
    assert not [run for run in instructions(kind, "RUN") if re.search(r"\bpip3? install\b", run)]

    calls = run_install_sh(tmp_path, flags)
    extras = installed_extras(calls[".venv"])
    assert "dev" not in extras
    pyproject = (ROOT / "pyproject.toml").read_text()
    if kind == "gpu":
        # The SNAC decoder's torch and snac; no vLLM inside (the model servers are apart).
        assert "orpheus" in extras
        assert re.search(r'^orpheus = \[.*"snac', pyproject, re.MULTILINE)
        assert calls[".venv-vllm"] == []
    else:
        # The embedded defaults: llama.cpp and, unless --light, vLLM's CPU build.
        assert "local-llm" in extras
        assert calls[".venv-vllm"] != []
        light = run_install_sh(tmp_path / "light", [*flags, "--light"])
        assert light[".venv-vllm"] == []


def test_install_sh_refuses_an_unknown_flag_before_installing_anything():
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--orpheus" in result.stderr and "--light" in result.stderr


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_copies_paths_that_exist_and_reach_the_context(kind: str):
    workdirs = instructions(kind, "WORKDIR")
    assert workdirs == [str(IMAGE_ROOT)]
    copied = []
    for value in instructions(kind, "COPY"):
        *sources, destination = shlex.split(value)
        assert not [source for source in sources if source.startswith("--from")]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"{DOCKERFILES[kind].name} copies {source}: missing"
            assert not ignored(source.rstrip("/")), f".dockerignore leaves out {source}"
            copied.append(source.rstrip("/"))
        assert destination in ("./", *(f"{source.rstrip('/')}/" for source in sources))
    # Everything the install and the server read is in the image.
    assert {
        "pyproject.toml",
        "README.md",
        "scripts",
        "voxline",
        "personas",
        "tools",
        "docker",
    } <= set(copied)
    # The local environments never reach the build context.
    assert ignored(".venv") and ignored(".venv-vllm") and ignored("voxline/__pycache__/x.pyc")
    assert not ignored("voxline/server/app.py")


def test_dockerignore_matcher_follows_the_patterns():
    assert ignored(".git/config")
    assert ignored("docker/.env")
    assert not ignored("docker/.env.example")
    assert ignored("tools/__pycache__/bank_tools.cpython-311.pyc")


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_runs_serve_as_a_user_with_a_liveness_healthcheck(kind: str):
    users = instructions(kind, "USER")
    assert users and users[-1] not in ("root", "0"), users
    assert any(f"--uid {users[-1]}" in run for run in instructions(kind, "RUN"))

    entrypoint = exec_form(instructions(kind, "ENTRYPOINT")[-1])
    command = exec_form(instructions(kind, "CMD")[-1])
    assert entrypoint[-1] == str(IMAGE_ROOT / ".venv" / "bin" / "voxline")
    assert command[0] == "serve"
    serve = {**parse_flags(command[1:])}
    assert serve["--host"] == "0.0.0.0"
    port = int(serve["--port"] or 0)
    assert port == serve_default_port()
    assert instructions(kind, "EXPOSE") == [str(port)]

    (healthcheck,) = instructions(kind, "HEALTHCHECK")
    probe = exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert f"http://127.0.0.1:{port}/health/live" in probe[-1]
    assert "GET" in app_routes()["/health/live"]
    # The probe is Python the image has, not a tool it lacks.
    assert probe[0] == str(IMAGE_ROOT / ".venv" / "bin" / "python")
    compile(probe[-1], "healthcheck", "exec")


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_config_is_a_valid_voxline_yaml(kind: str):
    from voxline.bot.check import check_paths

    config = in_repo(dockerfile_env(kind)["VOXLINE_CONFIG"])
    assert config.is_file()
    assert check_paths([config]) == 0


def test_cpu_image_needs_no_model_hub():
    from voxline import models

    env = dockerfile_env("cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HF_HUB_OFFLINE", raising=False)
        patch.setenv("VOXLINE_OFFLINE", env["VOXLINE_OFFLINE"])
        assert not models.downloads_allowed()
        persona = persona_of(in_repo(env["VOXLINE_CONFIG"]))
        assert Path(models.resolve_whisper(persona.stt.model)).is_dir()
        voice = models.resolve_piper(persona.tts.voice or "")
        assert isinstance(voice, models.PiperVoiceFiles)


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_models_are_downloaded_at_build_time_only_when_a_build_argument_asks(kind: str):
    downloading = [
        run
        for run in instructions(kind, "RUN")
        if re.search(r"download_model|from_pretrained|snapshot_download|huggingface-cli", run)
    ]
    args = dockerfile_args(kind)
    for run in downloading:
        guard = re.search(r'if \[ "\$(\w+)" = "1" \]', run)
        assert guard, f"an unconditional download: {run}"
        assert args[guard.group(1)] == "0"
    if kind == "gpu":
        assert downloading, "the GPU image offers PREFETCH_MODELS"
        persona = persona_of(in_repo(dockerfile_env("gpu")["VOXLINE_CONFIG"]))
        config = load_config(in_repo(dockerfile_env("gpu")["VOXLINE_CONFIG"]))
        assert args["WHISPER_MODEL"] == persona.stt.model
        assert args["SNAC_MODEL"] == config.engines.snac.model


def test_gpu_image_runs_whisper_and_snac_on_cuda_from_a_cuda_base():
    base = dockerfile_args("gpu")["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base)
    assert instructions("gpu", "FROM") == ["${CUDA_IMAGE}"]
    config = load_config(in_repo(dockerfile_env("gpu")["VOXLINE_CONFIG"]))
    assert config.engines.whisper.device == "cuda"
    assert config.engines.snac.device == "cuda"
    persona = persona_of(in_repo(dockerfile_env("gpu")["VOXLINE_CONFIG"]))
    assert persona.tts.engine == "orpheus"
    assert persona.llm.base_url and persona.tts.base_url


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_hadolint_finds_nothing(kind: str):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILES[kind])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- compose ------------------------------------------------------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_test_env() -> dict[str, str]:
    env = env_example()
    env.update({name: f"test-{name.lower()}" for name, value in env.items() if not value})
    return env


def test_compose_file_is_valid_against_the_compose_spec(tmp_path: Path):
    result = check_compose_schema(DOCKER / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # ... once its variables are filled in from .env.example, too.
    filled = tmp_path / "compose.yaml"
    filled.write_text(interpolate((DOCKER / "compose.yaml").read_text(), compose_test_env()))
    result = check_compose_schema(filled)
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema does reject a misspelt key (the check is not a no-op).
    broken = tmp_path / "broken.yaml"
    broken.write_text(filled.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    result = check_compose_schema(broken)
    assert result.returncode != 0
    assert "stop_grace_periods" in result.stdout + result.stderr


def test_compose_variables_are_the_ones_env_example_documents():
    used = {match.group(1) for match in VARIABLE.finditer((DOCKER / "compose.yaml").read_text())}
    assert used == set(env_example())
    # The secret the stack cannot run without has no default: compose stops with the hint.
    assert re.search(r"\$\{VOXLINE_STREAM_SECRET:\?[^}]+\}", (DOCKER / "compose.yaml").read_text())
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_builds_the_gpu_image_and_wires_voxline_to_both_model_servers():
    services = compose()["services"]
    assert {"llm", "orpheus", "voxline", "postgres"} <= set(services)
    voxline = services["voxline"]
    build = voxline["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILES["gpu"]
    for server in ("llm", "orpheus", "postgres"):
        assert voxline["depends_on"][server]["condition"] == "service_healthy"
        assert "healthcheck" in services[server]

    config_path = in_repo(voxline["environment"]["VOXLINE_CONFIG"])
    assert config_path == DOCKER / "voxline.compose.yaml"
    persona = persona_of(config_path)
    for host, url, served in (
        ("llm", persona.llm.base_url, persona.llm.model),
        ("orpheus", persona.tts.base_url, persona.tts.model),
    ):
        parts = urlsplit(url or "")
        assert (parts.hostname, parts.port) == (host, 8000), url
        assert services[host]["expose"] == [str(parts.port)]
        flags = parse_flags(services[host]["command"])
        assert flags["--served-model-name"] == served


def test_compose_mounts_what_the_image_reads_from_the_repository():
    voxline = compose()["services"]["voxline"]
    for volume in voxline["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            local = (DOCKER / source).resolve()
            assert local.exists(), volume
            assert in_repo(target).resolve() == local, volume


def test_compose_llm_runs_with_the_flags_voxline_gives_vllm():
    services = compose()["services"]
    env = env_example()
    llm = parse_flags([interpolate(arg, env) for arg in services["llm"]["command"]])
    expected = vllm_flags(tool_call_parser=VLLMConfig().tool_call_parser)
    assert set(expected) <= set(llm), set(expected) - set(llm)
    assert llm["--tool-call-parser"] == expected["--tool-call-parser"]
    assert "--enable-prefix-caching" in llm and llm["--enable-prefix-caching"] is None
    orpheus = parse_flags([interpolate(arg, env) for arg in services["orpheus"]["command"]])
    persona = persona_of(DOCKER / "voxline.compose.yaml")
    assert int(orpheus["--max-model-len"] or 0) >= persona.tts.max_tokens + 256
    # Two vLLM servers and voxline on one GPU: the two fractions leave voxline its share.
    share = float(llm["--gpu-memory-utilization"] or 1) + float(
        orpheus["--gpu-memory-utilization"] or 1
    )
    assert share <= 0.8
    for name in ("llm", "orpheus"):
        assert services[name]["image"].startswith("${VLLM_IMAGE:-vllm/vllm-openai:v")


def test_compose_voxline_env_is_what_voxline_reads():
    environment = compose()["services"]["voxline"]["environment"]
    code = env_names_in_code()
    unknown = set(environment) - code - set(LIBRARY_ENV)
    assert not unknown, f"voxline reads none of {unknown}"
    assert required_env() <= set(environment)


def test_compose_postgres_is_the_records_database():
    services = compose()["services"]
    config = load_config(DOCKER / "voxline.compose.yaml")
    assert config.records_url is not None
    url = urlsplit(config.records_url)
    assert url.scheme == "postgresql" and url.hostname == "postgres"
    assert url.password is None, "the password comes from the environment, not the file"
    postgres = services["postgres"]["environment"]
    assert url.username == postgres["POSTGRES_USER"]
    assert url.path.lstrip("/") == postgres["POSTGRES_DB"]
    voxline_env = services["voxline"]["environment"]
    assert voxline_env["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]


def test_compose_grace_period_outlasts_the_drain():
    config = load_config(DOCKER / "voxline.compose.yaml")
    grace = seconds(compose()["services"]["voxline"]["stop_grace_period"])
    assert grace >= drain_timeout(config) + GOODBYE_MARGIN_SECS


def test_cpu_docker_run_waits_for_the_drain():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    (run,) = re.findall(r"^docker run .*(?:\\\n.*)*", doc, re.MULTILINE)
    (timeout,) = re.findall(r"--stop-timeout (\d+)", run)
    config = load_config(in_repo(dockerfile_env("cpu")["VOXLINE_CONFIG"]))
    assert int(timeout) >= drain_timeout(config) + GOODBYE_MARGIN_SECS


def test_gpu_persona_is_the_bank_persona_on_gpu_servers():
    gpu = persona_of(DOCKER / "voxline.compose.yaml")
    cpu = load_persona(ROOT / "personas" / "bank_support.yaml")
    assert (gpu.name, gpu.prompt, gpu.greeting, gpu.tools) == (
        cpu.name,
        cpu.prompt,
        cpu.greeting,
        cpu.tools,
    )
    assert gpu.tool_specs.keys() == cpu.tool_specs.keys()


# --- Kubernetes ---------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_and_only_manifests():
    listed = set(read_yaml(K8S / "kustomization.yaml")["resources"])
    yaml_files = {path.name for path in K8S.glob("*.yaml")}
    not_applied = {"kustomization.yaml", "prometheus-adapter-values.yaml", "alerts.yaml"}
    assert listed == yaml_files - not_applied


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_kubernetes_resources(version: str):
    import kubernetes_validate

    kinds = set()
    for name, document in manifests():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {document['kind']}/{document['metadata']['name']}: {exc}")
        kinds.add(document["kind"])
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
    } <= kinds


def test_kubernetes_validate_rejects_a_misspelt_field():
    import kubernetes_validate

    deployment = json.loads(json.dumps(resource("Deployment", "voxline")))
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_k8s_config_is_a_valid_voxline_yaml(tmp_path: Path):
    from voxline.bot.check import check_paths

    assert check_paths([k8s_config_file(tmp_path)]) == 0


def probe(spec: dict[str, Any], name: str) -> tuple[str, str | int]:
    get = spec[name]["httpGet"]
    return get["path"], get["port"]


def test_voxline_probes_are_the_servers_health_routes():
    deployment = resource("Deployment", "voxline")
    spec = container(deployment)
    routes = app_routes()
    assert probe(spec, "readinessProbe") == ("/health/ready", "http")
    assert probe(spec, "livenessProbe") == ("/health/live", "http")
    assert probe(spec, "startupProbe") == ("/health/live", "http")
    assert "GET" in routes["/health/ready"] and "GET" in routes["/health/live"]
    # A full pod must leave the Service at the first 503, and come back at the first 200.
    assert spec["readinessProbe"]["failureThreshold"] == 1
    assert spec["readinessProbe"].get("successThreshold", 1) == 1
    (port,) = spec["ports"]
    assert port["name"] == "http"
    assert parse_flags(spec["args"][1:])["--port"] == str(port["containerPort"])
    assert port["containerPort"] == serve_default_port()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] in routes


def test_voxline_grace_period_outlasts_pre_stop_and_drain(tmp_path: Path):
    config = load_config(k8s_config_file(tmp_path))
    pod = resource("Deployment", "voxline")["spec"]["template"]["spec"]
    pre_stop = container(resource("Deployment", "voxline"))["lifecycle"]["preStop"]["exec"]
    assert pre_stop["command"][0] == "sleep"
    needed = float(pre_stop["command"][1]) + drain_timeout(config) + GOODBYE_MARGIN_SECS
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_voxline_runs_as_the_images_user_with_its_config_and_secrets(tmp_path: Path):
    deployment = resource("Deployment", "voxline")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == instructions("gpu", "USER")[-1]
    spec = container(deployment)
    assert spec["image"].split(":")[0] == "voxline-gpu"
    assert exec_form(instructions("gpu", "CMD")[-1]) == spec["args"]
    env = {item["name"]: item for item in spec["env"]}
    unknown = set(env) - env_names_in_code() - set(LIBRARY_ENV)
    assert not unknown, f"voxline reads none of {unknown}"
    assert required_env() <= set(env)
    from voxline.transports.twilio_webhook import STREAM_SECRET_ENV

    secret = env[STREAM_SECRET_ENV]["valueFrom"]["secretKeyRef"]
    assert not secret.get("optional", False)
    # VOXLINE_CONFIG names the ConfigMap's file where it is mounted.
    mounts = {mount["name"]: mount["mountPath"] for mount in spec["volumeMounts"]}
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == "voxline-config"
    assert env["VOXLINE_CONFIG"]["value"] == f"{mounts['config']}/voxline.yaml"
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_model_servers_are_the_ones_the_persona_names(tmp_path: Path):
    config = load_config(k8s_config_file(tmp_path))
    assert config.default_persona is not None
    persona = load_persona(config.default_persona)
    expected = vllm_flags(tool_call_parser=VLLMConfig().tool_call_parser)
    for host, url, served in (
        ("llm", persona.llm.base_url, persona.llm.model),
        ("orpheus", persona.tts.base_url, persona.tts.model),
    ):
        parts = urlsplit(url or "")
        service = resource("Service", parts.hostname or "")
        deployment = resource("Deployment", host)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == parts.port
        spec = container(deployment)
        assert spec["image"].startswith("vllm/vllm-openai:v")
        (port,) = spec["ports"]
        assert service_port["targetPort"] == port["name"] and port["containerPort"] == 8000
        flags = parse_flags(spec["args"])
        assert flags["--served-model-name"] == served
        if host == "llm":
            assert set(expected) <= set(flags), set(expected) - set(flags)
            assert flags["--tool-call-parser"] == expected["--tool-call-parser"]
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe(spec, name) == ("/health", "http")


def test_autoscaler_scales_voxline_on_its_active_calls_with_cpu_as_fallback(tmp_path: Path):
    config = load_config(k8s_config_file(tmp_path))
    hpa = resource("HorizontalPodAutoscaler", "voxline")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "voxline",
    }
    assert hpa["minReplicas"] >= 1
    by_type = {metric["type"]: metric for metric in hpa["metrics"]}
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] in exported_metrics()
    assert pods["metric"]["name"] == "voxline_calls_active"
    target = float(pods["target"]["averageValue"])
    assert 0 < target < config.max_calls
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert container(resource("Deployment", "voxline"))["resources"]["requests"]["cpu"]

    adapter = read_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"]
    (rule,) = adapter
    assert rule["name"]["as"] == pods["metric"]["name"]
    assert re.fullmatch(rule["name"]["matches"], pods["metric"]["name"])
    assert rule["seriesQuery"].split("{")[0] == pods["metric"]["name"]


def test_disruption_budget_and_service_select_the_voxline_pods():
    labels = resource("Deployment", "voxline")["spec"]["template"]["metadata"]["labels"]
    pdb = resource("PodDisruptionBudget", "voxline")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable")
    service = resource("Service", "voxline")["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] == "http"


def test_ingress_keeps_websockets_open_for_the_longest_call(tmp_path: Path):
    config = load_config(k8s_config_file(tmp_path))
    assert config.default_persona is not None
    persona = load_persona(config.default_persona)
    ingress = resource("Ingress", "voxline")
    annotations = ingress["metadata"]["annotations"]
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        timeout = float(annotations[f"nginx.ingress.kubernetes.io/{name}"])
        assert timeout >= persona.limits.max_call_secs
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    assert backend["name"] == "voxline" and backend["port"]["name"] == "http"
    assert config.public_url == f"https://{rule['host']}"
    # A stream that reaches a pod without a free line is answered 503 before the handshake:
    # the controller must try the next pod (docs/operations.md).
    retry = annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert "http_503" in retry
    assert "/twilio/stream/{instance}" in app_routes()
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]


# --- metric names wherever they are written -----------------------------------------------


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bvoxline_[a-z0-9_]+", text))


def deploy_texts() -> Iterator[tuple[str, str]]:
    for path in [*K8S.glob("*.yaml"), ROOT / "docs" / "deploy.md"]:
        yield str(path.relative_to(ROOT)), path.read_text()


def test_every_metric_named_in_the_deploy_files_and_docs_is_exported():
    exported = exported_metrics()
    assert "voxline_calls_active" in exported
    named = set()
    for where, text in deploy_texts():
        names = metric_names_in(text)
        assert not names - exported, f"{where} names {names - exported}, not exported"
        named |= names
    assert {"voxline_calls_active", "voxline_calls_refused_total"} <= named


def test_alert_rules_read_the_pods_max_calls(tmp_path: Path):
    config = load_config(k8s_config_file(tmp_path))
    rules = read_yaml(K8S / "alerts.yaml")
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert all(rule.get("alert") and rule["expr"] for g in rules["groups"] for rule in g["rules"])
    capacities = {
        int(number)
        for expr in expressions
        for number in re.findall(r"count\(voxline_calls_active\) \* (\d+)", expr)
    }
    assert capacities == {config.max_calls}
    # Label values the expressions match are ones the server writes.
    from voxline.processors.turn_trace import STAGES

    stages = {stage for expr in expressions for stage in re.findall(r'stage="(\w+)"', expr)}
    assert stages and stages <= set(STAGES)
    assert any("voxline_errors_total" in expr for expr in expressions)
    assert {"kind"} == {
        label
        for expr in expressions
        if "voxline_errors_total" in expr
        for label in re.findall(r"by \((\w+)\)", expr)
    }


def test_deploy_doc_names_files_that_exist_and_is_linked_from_the_readme():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    made_by_the_user = {"docker/.env"}
    for path in set(re.findall(r"\b((?:docker|benchmarks|docs|scripts)/[\w./-]+\w)", doc)):
        assert path in made_by_the_user or (ROOT / path).exists(), f"docs/deploy.md names {path}"
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()
    assert "../shared" not in doc
