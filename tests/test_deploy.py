"""The deployment recipes (docker/, cluster/, README's cluster section), checked without a Docker
engine, a cluster or a scheduler: linters, the Compose and Ray launcher schemas, and the
properties a working cluster depends on (a GPU on the workers, one shared storage path, token
authentication, commands that exist)."""
import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from search.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "mlflow.Dockerfile"]
COMPOSE = REPO / "docker" / "compose.yaml"
COMPOSE_SCHEMA = REPO.parent / "shared" / "fixtures" / "compose-spec" / "compose-spec.json"
RAY_CLUSTER = REPO / "cluster" / "ray-cluster.yaml"
SBATCH = REPO / "cluster" / "slurm" / "peft-search.sbatch"
RAYJOB = REPO / "cluster" / "kuberay" / "rayjob.yaml"
SHARED_VOLUME = REPO / "cluster" / "kuberay" / "shared-volume.yaml"
SHARED_PATH = "/shared"


def _tool(name: str) -> str:
    """A linter installed by the test extra: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


def _hadolint(dockerfile: Path, home: Path) -> subprocess.CompletedProcess:
    # An empty HOME/XDG_CONFIG_HOME so that no personal hadolint config relaxes the rules.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    return subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, env=env, cwd=home, timeout=60)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    """A service's environment as a dict, whichever of Compose's two spellings it uses."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def _named_mounts(service: dict) -> dict[str, str]:
    """Named volume -> mount path, from short (`name:/path[:ro]`) and long volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        if source and not source.startswith((".", "/", "~")):
            mounts[source] = target
    return mounts


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def _ray_services(compose: dict) -> dict[str, dict]:
    return {name: service for name, service in compose["services"].items()
            if _command(service)[:2] == ["ray", "start"]}


# --- Dockerfiles ------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile, tmp_path):
    result = _hadolint(dockerfile, tmp_path)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_reports_what_it_should(tmp_path):
    """The check above is only worth something if hadolint really lints: a floating tag and an
    unpinned pip install must be reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install mlflow\n")
    result = _hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout, result.stdout


def test_worker_image_sets_the_offline_and_auth_environment():
    text = (REPO / "docker" / "Dockerfile").read_text()
    for setting in ("HF_HUB_OFFLINE=1", "RAY_USAGE_STATS_ENABLED=0", "RAY_AUTH_MODE=token"):
        assert setting in text, f"docker/Dockerfile does not set {setting}"
    for dockerfile in DOCKERFILES:
        users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), flags=re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root"), f"{dockerfile.name} runs as root"


def test_dockerignore_keeps_local_state_out_and_the_package_in():
    patterns = [line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for heavy in (".venv", ".git", "runs", "data", "mlruns", "*.egg-info", "**/__pycache__"):
        assert heavy in patterns, f".dockerignore does not exclude {heavy}"
    # `pip install .` in the image needs these; a top-level pattern matching one breaks the build.
    for needed in ("pyproject.toml", "README.md", "peft_core", "search", "spaces"):
        matching = [pattern for pattern in patterns if "/" not in pattern and Path(needed).match(pattern)]
        assert not matching, f".dockerignore excludes {needed} (via {matching})"


# --- docker/compose.yaml ----------------------------------------------------------------------

@pytest.mark.skipif(not COMPOSE_SCHEMA.is_file(), reason="../shared/fixtures not present")
def test_compose_file_matches_the_compose_specification():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(_compose())]
    assert not errors, "docker/compose.yaml:\n" + "\n".join(errors)
    # And the schema does reject a mistake (a misspelt key), so the pass above means something.
    broken = _compose()
    deploy = broken["services"]["ray-worker"]["deploy"]
    deploy["resource"] = deploy.pop("resources")
    assert list(validator.iter_errors(broken))


def test_compose_worker_reserves_a_gpu():
    devices = _compose()["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(device.get("driver") == "nvidia" and "gpu" in device["capabilities"] for device in devices)


def test_compose_ray_nodes_share_the_study_storage_at_one_path():
    compose = _compose()
    ray = _ray_services(compose)
    assert {"ray-head", "ray-worker"} <= set(ray), f"Ray services found: {sorted(ray)}"
    shared = [{volume: path for volume, path in _named_mounts(service).items() if path == SHARED_PATH}
              for service in ray.values()]
    assert all(shared), f"a Ray service mounts nothing at {SHARED_PATH}: {shared}"
    assert all(mounts == shared[0] for mounts in shared), f"Ray services mount different volumes: {shared}"
    assert set(shared[0]) <= set(compose["volumes"]), "the shared volume is not declared"
    assert len({service["image"] for service in ray.values()}) == 1, "head and workers differ in image"


def test_compose_ray_services_require_token_auth():
    for name, service in _ray_services(_compose()).items():
        env = _env(service)
        assert env.get("RAY_AUTH_MODE") == "token", f"{name}: RAY_AUTH_MODE={env.get('RAY_AUTH_MODE')}"
        # `${VAR:?message}` makes `docker compose up` stop when the token is missing.
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]*\}", env.get("RAY_AUTH_TOKEN", "")), \
            f"{name}: RAY_AUTH_TOKEN is not required from the environment"


def test_compose_publishes_the_jobs_api_on_localhost_only():
    compose = _compose()
    assert "127.0.0.1:8265:8265" in compose["services"]["ray-head"]["ports"]
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_mlflow_uses_postgres_without_job_execution():
    services = _compose()["services"]
    command = _command(services["mlflow"])
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql://") and "@postgres:" in backend, backend
    assert _env(services["mlflow"])["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    assert "pgdata" in _named_mounts(services["postgres"])


def test_compose_images_build_from_dockerfiles_that_exist():
    built = set()
    for name, service in _compose()["services"].items():
        if "build" not in service:
            continue
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        built.add(dockerfile)
    assert built == {path.resolve() for path in DOCKERFILES}


def test_compose_demo_study_lives_on_the_shared_volume_and_logs_to_the_compose_mlflow():
    from search.study import load_study
    study = load_study(COMPOSE.parent / "demo-study.yaml", check_data=False)
    assert study.storage_path.startswith(SHARED_PATH + "/")
    assert all(Path(dataset.data_path).is_relative_to(SHARED_PATH) for dataset in study.datasets.values())
    mlflow = _compose()["services"]["mlflow"]
    port = _command(mlflow)[_command(mlflow).index("--port") + 1]
    assert study.mlflow.tracking_uri == f"http://mlflow:{port}"


# --- cluster/ray-cluster.yaml -----------------------------------------------------------------

def test_ray_cluster_config_passes_the_launchers_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(yaml.safe_load(RAY_CLUSTER.read_text())))


def test_ray_cluster_has_a_cpu_head_and_autoscaled_gpu_workers_in_the_image():
    config = yaml.safe_load(RAY_CLUSTER.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    workers = {name: node for name, node in types.items() if name != config["head_node_type"]}
    assert workers
    for name, node in workers.items():
        family = node["node_config"]["InstanceType"].split(".")[0]
        assert family[0] in "gp", f"{name}: {family} is not an AWS GPU instance family"
        assert node["max_workers"] > node.get("min_workers", 0), f"{name} cannot scale"
        image = node.get("docker", {}).get("worker_image") or config["docker"].get("worker_image") \
            or config["docker"]["image"]
        assert image and "peft-search" in image


def test_ray_cluster_mounts_shared_storage_and_the_token_on_every_node():
    config = yaml.safe_load(RAY_CLUSTER.read_text())
    options = " ".join(config["docker"]["run_options"])
    assert f"-v {SHARED_PATH}:{SHARED_PATH}" in options
    assert "RAY_AUTH_MODE=token" in options
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert str(Path(token_path).parent) in config["file_mounts"], "the token file is not copied to the nodes"
    assert any(SHARED_PATH in command for command in config["initialization_commands"])


# --- cluster/slurm/peft-search.sbatch ---------------------------------------------------------

def test_sbatch_script_parses_and_passes_shellcheck():
    syntax = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run([_tool("shellcheck"), str(SBATCH)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_sbatch_script_starts_ray_with_auth_and_never_runs_ray_stop():
    text = SBATCH.read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert any("--nodes" in line for line in directives)
    assert any("--gpus-per-task" in line or "--gres=gpu" in line for line in directives)
    assert any("ray start --head" in line for line in code)
    assert any(re.search(r"\bray start --address", line) for line in code)
    assert not any(re.search(r"\bray stop\b", line) for line in code), "ray stop kills other users' Ray"
    assert any("RAY_AUTH_MODE=token" in line for line in code)


# --- cluster/kuberay/rayjob.yaml --------------------------------------------------------------

def _pod_templates(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"]] + \
        [group["template"] for group in cluster_spec["workerGroupSpecs"]]


def test_rayjob_runs_a_study_on_gpu_workers_with_shared_storage_and_token_auth():
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    words = shlex.split(spec["entrypoint"])
    assert words[0] == "peft-search" and build_parser().parse_args(words[1:]).command in ("run", "resume")
    assert all(word.startswith(SHARED_PATH) for word in words[2:] if word.startswith("/")), words

    cluster = spec["rayClusterSpec"]
    assert cluster.get("authOptions", {}).get("mode") == "token"
    claims = set()
    for template in _pod_templates(cluster):
        pod = template["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            shared = [mount for mount in container["volumeMounts"] if mount["mountPath"] == SHARED_PATH]
            assert shared, f"{container['name']} does not mount {SHARED_PATH}"
            claims.add(volumes[shared[0]["name"]]["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"pods mount different claims at {SHARED_PATH}: {claims}"

    for group in cluster["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, container["name"]

    volumes = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(SHARED_VOLUME.read_text())
               if doc["kind"] == "PersistentVolumeClaim"}
    (claim,) = claims
    assert claim in volumes, f"{claim} is not defined in {SHARED_VOLUME.name}"
    assert volumes[claim]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_ray_version_matches_the_image():
    image_ray = re.search(r"^ARG RAY_VERSION=(\S+)", (REPO / "docker" / "Dockerfile").read_text(), re.M)
    job = yaml.safe_load(RAYJOB.read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == image_ray.group(1)


# --- the peft-search commands the recipes and README use exist ---------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> dict:
    """The words allowed right after a command: its sub-parsers, or its first positional's
    choices (`jobs status|logs|stop`); empty when the next word is free (a file, a folder)."""
    positionals = [action for action in parser._actions if not action.option_strings]
    if not positionals or positionals[0].choices is None:
        return {}
    return dict.fromkeys(positionals[0].choices) if not isinstance(positionals[0].choices, dict) \
        else dict(positionals[0].choices)


def _invocations() -> list[tuple[str, str]]:
    """(where, "peft-search WORD [WORD]") for every command line in the recipes and in README's
    shell blocks and inline code. Prose comments are skipped; example commands in comments are
    indented (`#   peft-search ...`)."""
    command = re.compile(r"(?:^|[\s`'\"(])peft-search ([a-z][a-z-]*)(?: ([a-z][a-z|-]*))?")
    found = []
    for path in [COMPOSE, RAY_CLUSTER, SBATCH, RAYJOB, SHARED_VOLUME]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.lstrip()
            if stripped.startswith("#") and not re.match(r"#\s{2,}\S", stripped):
                continue
            found += [(f"{path.name}:{number}", match) for match in command.findall(line)]
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.splitlines():
            code = re.sub(r"(^|\s)#.*", "", line)  # a shell comment is prose
            found += [("README.md (bash)", match) for match in command.findall(code)]
    for code in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", readme, flags=re.S)):
        found += [("README.md (inline)", match) for match in command.findall(code)]
    return found


def test_every_peft_search_command_in_the_recipes_and_readme_exists():
    commands = _subcommands(build_parser())
    invocations = _invocations()
    used = {name for _, (name, _) in invocations}
    assert {"run", "submit", "jobs", "mlflow-server"} <= used, f"commands found: {sorted(used)}"
    missing = []
    for where, (name, argument) in invocations:
        if name not in commands:
            missing.append(f"{where}: peft-search {name}")
            continue
        nested = _subcommands(commands[name])
        if nested and argument:
            missing += [f"{where}: peft-search {name} {word}"
                        for word in argument.split("|") if word not in nested]
    assert not missing, "commands that `peft-search` does not have:\n" + "\n".join(sorted(set(missing)))
