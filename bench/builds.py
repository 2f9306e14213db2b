"""Layer-cache reuse of builds and pushes: cold build vs rebuild, and a re-push of an image the
registry already has.

    python bench/builds.py [--rounds 3] [--backends docker,buildah] [--megabytes 64]

It starts its own Docker engine (vfs storage, like the tests), buildah storage and registry
(htpasswd auth) in a temporary directory, and stops them when it ends. Each round makes a new git
repository (a unique marker file, so no round reuses another's cache) whose Dockerfile does real
work in a RUN step (``--megabytes`` of random data written and hashed, 256 by default: a small
stand-in for the dependency installs of a real server image), then, per backend, times
exactly what ``builds.build_image`` does for one platform, with the same code:

1. **cold**: fetch the revision into a fresh work directory and build it (nothing cached);
2. **rebuild**: fetch the same revision again into another fresh directory and build it;
3. **push**, then **re-push** of the same image to the registry (another tag), counting the
   layer bytes sent.

Targets: rebuild time ≤ 10% of the cold time, and a re-push that sends no layer bytes. The
report gives the median of the rounds and each round's figures. It measures the builder and the
registry path (fetch, build, verify, push) without the queue around it: the queue's own cost is
what bench/throughput.py measures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.git import fetch_revision
from adapters.git_inputs import resolve_inside
from drydock import localservers
from kernel.platforms import Platform
from kernel.settings import Settings
from tasks.builds.backends import BuilderBackend, BuildSpec, backend_for, verify_platform
from testkit.docker_engine import start_dockerd
from testkit.registry import RegistryServer, new_registry_server, registry_config

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@drydock.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@drydock.invalid",
}


def dockerfile(megabytes: int) -> str:
    work = (
        f"dd if=/dev/urandom of=/data.bin bs=1M count={megabytes} 2>/dev/null && "
        "busybox sha256sum /data.bin > /data.sha256"
    )
    return (
        "FROM scratch\n"
        "COPY marker /marker\n"
        "COPY busybox /bin/busybox\n"
        f'RUN ["/bin/busybox", "sh", "-c", "{work}"]\n'
        'CMD ["/bin/busybox", "cat", "/data.sha256"]\n'
    )


def make_repository(path: Path, megabytes: int) -> str:
    path.mkdir(parents=True)
    shutil.copy2("/bin/busybox", path / "busybox")
    (path / "marker").write_text(f"{uuid.uuid4()}\n")
    (path / "Dockerfile").write_text(dockerfile(megabytes))
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "-m", "bench"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()


@dataclass
class Round:
    cold_s: float
    rebuild_s: float
    rebuild_fetch_s: float
    steps_cached: int
    steps_total: int
    push_bytes: int
    repush_bytes: int
    repush_layers_pushed: int


def fetch_and_build(
    backend: BuilderBackend, url: str, commit: str, work: Path, tag: str, settings: Settings
) -> tuple[float, float, int, int]:
    """(seconds in all, of which fetching, steps cached, steps)."""
    started = time.monotonic()
    source = fetch_revision(
        url,
        commit,
        work,
        allowed_schemes=["file"],
        timeout_seconds=settings.git_timeout_seconds,
        max_bytes=settings.git_max_bytes,
    )
    fetched = time.monotonic() - started
    platform = Platform.parse("linux/amd64")
    built = backend.build(
        BuildSpec(
            context=source.path,
            dockerfile=resolve_inside(source.path, "Dockerfile", "dockerfile"),
            tag=tag,
            platform=platform,
        ),
        lambda line: None,
        lambda index, total, instruction: None,
    )
    verify_platform(backend, built.tag, platform)
    return time.monotonic() - started, fetched, built.steps_cached, built.steps_total


def one_round(
    backend: BuilderBackend,
    base: Path,
    registry: RegistryServer,
    settings: Settings,
    megabytes: int,
) -> Round:
    name = uuid.uuid4().hex[:8]
    repo = base / f"repo-{name}"
    commit = make_repository(repo, megabytes)
    tag = f"bench/{backend.name}-{name}:{commit[:12]}"
    cold, _, _, _ = fetch_and_build(
        backend, repo.as_uri(), commit, base / f"w1-{name}", tag, settings
    )
    warm, warm_fetch, cached, total = fetch_and_build(
        backend, repo.as_uri(), commit, base / f"w2-{name}", tag, settings
    )
    pushed = []
    for suffix in ("first", "again"):
        target = f"{registry.host}/bench/{backend.name}-{name}:{suffix}"
        backend.tag(tag, target)
        pushed.append(
            backend.push(
                target, target, registry.credential(), insecure=True, on_line=print_nothing
            )
        )
    return Round(
        cold_s=cold,
        rebuild_s=warm,
        rebuild_fetch_s=warm_fetch,
        steps_cached=cached,
        steps_total=total,
        push_bytes=pushed[0].bytes_sent,
        repush_bytes=pushed[1].bytes_sent,
        repush_layers_pushed=pushed[1].layers_pushed,
    )


def print_nothing(line: str) -> None:
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="docker,buildah")
    parser.add_argument("--megabytes", type=int, default=256)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="drydock-bench-builds-"))
    stops = []
    try:
        engine = start_dockerd(f"unix://{base}/docker/docker.sock", base / "docker")
        stops.append(engine.stop)
        registry = new_registry_server(base / "registry", localservers.free_port(), "bench")
        registry.config_path.write_text(
            registry_config(registry.workdir, registry.port, registry.htpasswd_path)
        )
        registry.start()
        stops.append(registry.stop)
        settings = Settings(
            docker_host=engine.url,
            buildah_root=str(base / "buildah" / "root"),
            buildah_runroot=str(base / "buildah" / "run"),
        )
        failed = False
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            backend = backend_for(name, settings)
            rounds = [
                one_round(backend, base, registry, settings, args.megabytes)
                for _ in range(args.rounds)
            ]
            failed |= report(name, rounds)
        return 1 if failed else 0
    finally:
        for stop in reversed(stops):
            stop()
        subprocess.run(
            [
                "buildah",
                "--root",
                str(base / "buildah" / "root"),
                "--runroot",
                str(base / "buildah" / "run"),
                "--storage-driver",
                "vfs",
                "rm",
                "--all",
            ],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def report(backend: str, rounds: list[Round]) -> bool:
    """Print the backend's figures; True when a target was missed."""
    cold = statistics.median(r.cold_s for r in rounds)
    warm = statistics.median(r.rebuild_s for r in rounds)
    ratio = warm / cold
    repush = max(r.repush_bytes for r in rounds)
    print(f"\n{backend}: {len(rounds)} round(s)")
    print("  round  cold s  rebuild s (fetch)  ratio  cached  pushed bytes  re-push bytes (layers)")
    for number, r in enumerate(rounds, start=1):
        print(
            f"  {number:>5}  {r.cold_s:6.2f}  {r.rebuild_s:9.2f} ({r.rebuild_fetch_s:.2f})"
            f"  {r.rebuild_s / r.cold_s:5.1%}"
            f"  {r.steps_cached}/{r.steps_total:<4}  {r.push_bytes:>12,}"
            f"  {r.repush_bytes:>13,} ({r.repush_layers_pushed})"
        )
    rebuild_ok = ratio <= 0.10
    repush_ok = repush == 0 and all(r.repush_layers_pushed == 0 for r in rounds)
    print(
        f"  median cold {cold:.2f} s, rebuild {warm:.2f} s: {ratio:.1%} of cold "
        f"(target ≤ 10%: {'met' if rebuild_ok else 'MISSED'})"
    )
    print(
        f"  re-push of an unchanged image: {repush:,} layer bytes sent "
        f"(target 0: {'met' if repush_ok else 'MISSED'})"
    )
    return not (rebuild_ok and repush_ok)


if __name__ == "__main__":
    sys.exit(main())
