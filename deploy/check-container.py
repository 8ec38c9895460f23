#!/usr/bin/env python3
"""Checks the Dockerfile without a Docker engine, then runs the binary the way the image does.

    deploy/check-container.py target/release/dispatchd     # from the repository root
    deploy/check-container.py --static-only                # the Dockerfile alone

1. The Dockerfile itself: the image runs on debian:bookworm-slim as a numeric non-root user,
   with a HEALTHCHECK calling `dispatchd healthcheck`, a VOLUME holding the SQLite file,
   EXPOSE 8080, STOPSIGNAL SIGTERM, `dispatchd serve`; the build compiles with
   `--release --locked`, and everything compiling dispatchd reads (manifests, the patched
   crates, src/, build.rs, and what include_str!/include_bytes!/sqlx::migrate! embed) is copied
   into the build stage at its place and is not kept out of the context by .dockerignore.
2. The runtime stage, run as the container would run it: the given binary in place of the one
   the build stage produces, a fresh directory as the volume, the final stage's ENV as the whole
   environment (only the volume's path and the port rewritten), `dispatchd serve` started as the
   image's user (with setpriv, when this check runs as root). Then the HEALTHCHECK's command must
   pass once the server is up and fail (exit 1) against a port where nothing listens, the SQLite
   file and the token key must appear in the volume, owned by that user, and SIGTERM must stop
   the server with exit code 0 within `docker stop`'s grace (10 s).

Exits 0 when every check passes, 1 with a line saying which failed otherwise. Python 3.11,
standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# `docker stop` (and compose) send STOPSIGNAL, then SIGKILL after this many seconds.
DOCKER_STOP_GRACE_SECS = 10
# How long the server may take to answer its first healthcheck.
HEALTHY_WITHIN_SECS = 30
# PATH in a container whose image sets none (Docker's default).
DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CheckFailed(Exception):
    pass


def fail(message: str) -> None:
    raise CheckFailed(message)


def ok(message: str) -> None:
    print(f"ok    {message}", flush=True)


def note(message: str) -> None:
    print(f"note  {message}", flush=True)


# ---- the Dockerfile ----------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array form (["a", "b"]), or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage: continuation lines joined, comment lines dropped."""
    stages: list[Stage] = []
    args: dict[str, str] = {}
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue
        if not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = pending + stripped
        pending = ""
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
            continue
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
            continue
        if not stages:
            fail(f"Dockerfile line {number}: {keyword} before the first FROM")
        stages[-1].instructions.append(Instruction(keyword, rest, start))
    if pending:
        fail("Dockerfile ends in a line continuation")
    if not stages:
        fail("Dockerfile has no FROM")
    return stages


def split_options(args: str) -> tuple[dict[str, str], str]:
    """Leading --name=value options of COPY/HEALTHCHECK, and the rest."""
    options: dict[str, str] = {}
    rest = args.strip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        options[name] = value
        rest = rest.strip()
    return options, rest


def copy_operands(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    options, rest = split_options(instruction.args)
    parts = Instruction(instruction.keyword, rest, instruction.line).exec_form() or shlex.split(rest)
    if len(parts) < 2:
        fail(f"Dockerfile line {instruction.line}: COPY needs a source and a destination")
    return options, parts[:-1], parts[-1]


def env_of(stage: Stage) -> dict[str, str]:
    """The environment the stage's ENV instructions set, in order."""
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        words = shlex.split(instruction.args)
        if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, sep, value = word.partition("=")
            if not sep:
                fail(f"Dockerfile line {instruction.line}: cannot read ENV {word!r}")
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


def duration_secs(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(amount) * units[unit]
    return total


# ---- .dockerignore -------------------------------------------------------------------------


def ignore_rules(path: Path) -> list[tuple[re.Pattern[str], bool]]:
    """(regex, is_exception) per line, as Docker reads them: the last match decides."""
    rules = []
    if not path.exists():
        return rules
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if exception else line).lstrip("/")
        rules.append((re.compile(pattern_regex(pattern)), exception))
    return rules


def pattern_regex(pattern: str) -> str:
    out, i = "^", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 == len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c in "[]":
            out += c
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return out + "$"


def ignored(rules: list[tuple[re.Pattern[str], bool]], relative: str) -> bool:
    """Whether the file at `relative` stays out of the build context."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for regex, exception in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not exception
    return excluded


# ---- what compiling dispatchd reads ----------------------------------------------------------


def files_under(root: Path, relative: str) -> list[str]:
    path = root / relative
    if path.is_file():
        return [relative]
    return sorted(
        str(p.relative_to(root))
        for p in path.rglob("*")
        if p.is_file() and "node_modules" not in p.parts and "target" not in p.relative_to(root).parts[:1]
    )


def needed_by_cargo(root: Path) -> dict[str, str]:
    """Repository paths (files or directories) the release build reads, with why."""
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    needed = {"Cargo.toml": "the manifest", "Cargo.lock": "--locked", "src": "the crate's sources"}
    if (root / "build.rs").exists():
        needed["build.rs"] = "the build script"
    for member in manifest.get("workspace", {}).get("members", []):
        needed[f"{member}/Cargo.toml"] = f"workspace member {member}"
    for patches in manifest.get("patch", {}).values():
        for name, spec in patches.items():
            if isinstance(spec, dict) and "path" in spec:
                needed[os.path.normpath(spec["path"])] = f"[patch] {name}"
    embeds = re.compile(
        r'(include_str|include_bytes|include)!\(\s*(?:concat!\(\s*)?"([^"]+)"'
        r'|sqlx::migrate!\(\s*"([^"]+)"'
    )
    for source in sorted((root / "src").rglob("*.rs")):
        for match in embeds.finditer(source.read_text()):
            if match.group(3):  # relative to the crate's root
                target = os.path.normpath(match.group(3))
                needed[target] = f"sqlx::migrate! in {source.relative_to(root)}"
                continue
            target = os.path.normpath(os.path.join(source.parent.relative_to(root), match.group(2)))
            if target.startswith("src/") or target == "src":
                continue
            needed[target] = f"{match.group(1)}! in {source.relative_to(root)}"
    return needed


def landing(sources: list[str], dest: str, workdir: str, root: Path) -> dict[str, str]:
    """Where each source of one COPY lands: source path -> absolute path in the image."""
    base = dest if dest.startswith("/") else str(PurePosixPath(workdir) / dest)
    into_directory = dest.endswith("/") or len(sources) > 1
    places = {}
    for source in sources:
        source = os.path.normpath(source)
        if (root / source).is_dir():
            places[source] = os.path.normpath(base)
        elif into_directory:
            places[source] = os.path.normpath(str(PurePosixPath(base) / PurePosixPath(source).name))
        else:
            places[source] = os.path.normpath(base)
    return places


# ---- structure -------------------------------------------------------------------------------


@dataclass
class Runtime:
    """What the checks of the running binary need from the final stage."""

    env: dict[str, str]
    volume: str
    workdir: str
    uid: int
    gid: int
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    healthcheck_timeout: float
    binary_dir: str


def check_structure(root: Path, dockerfile: Path) -> Runtime:
    stages = parse_dockerfile(dockerfile.read_text())
    if len(stages) < 2:
        fail("the Dockerfile must be multi-stage: a build stage and a runtime stage")
    final, builds = stages[-1], stages[:-1]

    if final.image != "debian:bookworm-slim":
        fail(f"the final stage runs on {final.image}, not debian:bookworm-slim")
    ok("final stage FROM debian:bookworm-slim")

    cargo_builds = [
        i for stage in builds for i in stage.all("RUN") if re.search(r"\bcargo\s+build\b[^&;]*--release", i.args)
    ]
    if not cargo_builds or not all("--locked" in i.args for i in cargo_builds):
        fail("the build stage must run `cargo build --release --locked`")
    ok(f"build stage runs cargo build --release --locked ({builds[-1].image})")

    user = final.last("USER")
    if user is None:
        fail("the final stage has no USER: the server would run as root")
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user.args.strip())
    if not match:
        fail(f"USER {user.args} is not a numeric uid[:gid] (Kubernetes' runAsNonRoot needs a number)")
    uid, gid = int(match.group(1)), int(match.group(2) or match.group(1))
    if uid == 0:
        fail("USER is root")
    made = [i for i in final.all("RUN") if "useradd" in i.args]
    if made and not re.search(rf"--uid[ =]{uid}\b", made[-1].args):
        fail(f"USER {uid} is not the uid the image's useradd creates")
    ok(f"runs as uid {uid}, gid {gid}")

    health = final.last("HEALTHCHECK")
    if health is None:
        fail("the final stage has no HEALTHCHECK")
    options, rest = split_options(health.args)
    if not rest.upper().startswith("CMD"):
        fail(f"HEALTHCHECK {health.args!r} has no CMD")
    command = Instruction("CMD", rest[3:], health.line).exec_form() or shlex.split(rest[3:])
    if command[:2] != ["dispatchd", "healthcheck"]:
        fail(f"HEALTHCHECK runs {command}, not `dispatchd healthcheck`")
    timeout = duration_secs(options.get("timeout", "30s"))
    ok(f"HEALTHCHECK runs {' '.join(command)} (timeout {timeout:g} s)")

    env = env_of(final)
    volumes = [v for i in final.all("VOLUME") for v in (i.exec_form() or i.args.split())]
    if len(volumes) != 1:
        fail(f"the final stage must declare one VOLUME for the data, not {volumes}")
    volume = volumes[0].rstrip("/")
    sqlite = env.get("DISPATCHD__DATABASE__SQLITE_PATH", "")
    if not sqlite.startswith(volume + "/"):
        fail(f"DISPATCHD__DATABASE__SQLITE_PATH={sqlite!r} is not in the VOLUME {volume}: the data would not persist")
    workdir = final.last("WORKDIR")
    if workdir is None or workdir.args.strip().rstrip("/") != volume:
        fail(f"WORKDIR must be the volume {volume}")
    owner = volume_owner(final, volume)
    if owner != (uid, gid):
        fail(f"the image gives the volume {volume} to {owner}, not to its USER {uid}:{gid}: the server could not write it")
    ok(f"VOLUME {volume} holds {sqlite}, owned by the USER; WORKDIR {volume}")

    exposed = [p for i in final.all("EXPOSE") for p in i.args.split()]
    if "8080" not in exposed and "8080/tcp" not in exposed:
        fail(f"EXPOSE 8080 missing (exposes {exposed})")
    addr = env.get("DISPATCHD__SERVER__ADDR", "0.0.0.0:8080")
    if not addr.endswith(":8080") or addr.rsplit(":", 1)[0] not in ("0.0.0.0", "[::]"):
        fail(f"DISPATCHD__SERVER__ADDR={addr} must listen on every interface, port 8080, the one exposed")
    ok(f"EXPOSE 8080, server.addr {addr}")

    stop = final.last("STOPSIGNAL")
    if stop is None or stop.args.strip() not in ("SIGTERM", "15"):
        fail("STOPSIGNAL SIGTERM missing")
    entrypoint = (final.last("ENTRYPOINT") or Instruction("ENTRYPOINT", "", 0)).exec_form()
    cmd = (final.last("CMD") or Instruction("CMD", "", 0)).exec_form()
    if entrypoint != ["dispatchd"] or cmd != ["serve"]:
        fail(f'want ENTRYPOINT ["dispatchd"] and CMD ["serve"], got {entrypoint} and {cmd}')
    ok('STOPSIGNAL SIGTERM, ENTRYPOINT ["dispatchd"], CMD ["serve"]')

    copied = [c for c in final.all("COPY") if "from" in copy_operands(c)[0]]
    if not copied:
        fail("the final stage copies no binary from the build stage")
    _, sources, dest = copy_operands(copied[-1])
    name = os.path.basename(sources[0]) if dest.endswith("/") else os.path.basename(dest)
    binary_dir = dest.rstrip("/") if dest.endswith("/") else os.path.dirname(dest)
    if name != "dispatchd":
        fail(f"the binary is copied to {dest} as {name}, not as dispatchd")
    path = env.get("PATH", DOCKER_DEFAULT_PATH)
    if binary_dir not in path.split(":"):
        fail(f"the binary lands in {binary_dir}, which is not on the image's PATH")
    ok(f"the binary lands in {binary_dir}, on the PATH")

    check_build_context(root, builds)
    return Runtime(env, volume, volume, uid, gid, entrypoint, cmd, command, timeout, binary_dir)


def volume_owner(final: Stage, volume: str) -> tuple[int, int] | None:
    """The uid and gid the final stage's RUN gives the volume's directory (install -d -o/-g or
    chown), names resolved through its groupadd/useradd."""
    ids: dict[str, int] = {}
    for run in final.all("RUN"):
        for tool, number, name in re.findall(r"\b(groupadd|useradd)\b[^&;]*?--[ug]id[ =](\d+)[^&;]*?\s(\w+)\s*(?:&&|;|$)", run.args):
            ids[f"{tool}:{name}"] = int(number)

    def resolve(value: str, tool: str) -> int | None:
        return int(value) if value.isdigit() else ids.get(f"{tool}:{value}")

    owner = None
    escaped = re.escape(volume)
    for run in final.all("RUN"):
        for user, group in re.findall(rf"\binstall\s+-d\s+-o\s+(\S+)\s+-g\s+(\S+)[^&;]*\s{escaped}/?(?:\s|$)", run.args):
            owner = (resolve(user, "useradd"), resolve(group, "groupadd"))
        for user, group in re.findall(rf"\bchown\s+(?:-R\s+)?([^\s:]+):(\S+)\s+[^&;]*{escaped}/?(?:\s|$)", run.args):
            owner = (resolve(user, "useradd"), resolve(group, "groupadd"))
    return owner


def check_build_context(root: Path, builds: list[Stage]) -> None:
    rules = ignore_rules(root / ".dockerignore")
    stage = builds[-1]
    workdir = "/"
    placed: dict[str, str] = {}  # repository path -> where it lands in the image
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / instruction.args.strip())
        if instruction.keyword != "COPY":
            continue
        options, sources, dest = copy_operands(instruction)
        if "from" in options:
            continue
        for source, place in landing(sources, dest, workdir, root).items():
            if not (root / source).exists():
                fail(f"Dockerfile line {instruction.line}: COPY {source}: no such file in the repository")
            files = files_under(root, source)
            excluded = [f for f in files if ignored(rules, f)]
            if ignored(rules, source) or excluded:
                fail(f"Dockerfile line {instruction.line}: COPY {source}: excluded by .dockerignore ({(excluded or [source])[0]})")
            for file in files:
                placed[file] = os.path.normpath(place + file[len(source) :]) if file != source else place
    ok(f"every COPY source of the build stage exists and is in the build context ({len(placed)} files)")

    for needed, why in sorted(needed_by_cargo(root).items()):
        if not (root / needed).exists():
            fail(f"{needed} ({why}) does not exist")
        for file in files_under(root, needed):
            want = os.path.normpath(str(PurePosixPath(workdir) / file))
            if placed.get(file) != want:
                fail(f"{file} ({why}) is not copied to {want} in the build stage (at {placed.get(file)})")
    ok("everything cargo reads is copied where it expects it: " + ", ".join(sorted(needed_by_cargo(root))))


# ---- running it ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_like_the_image(binary: Path, runtime: Runtime) -> None:
    as_root = os.geteuid() == 0
    if not as_root:
        note(f"not running as root: the server runs as {os.geteuid()}, not as uid {runtime.uid}")
    if not os.access(binary, os.X_OK):
        fail(f"{binary} is not an executable file")
    scratch = Path(tempfile.mkdtemp(prefix="dispatchd-container-"))
    server = None
    try:
        os.chmod(scratch, 0o755)
        # The image's file system, as far as the server sees it: the binary where the final
        # stage copies it, and the volume, owned by the image's user as the image creates it.
        binary_dir = scratch / runtime.binary_dir.lstrip("/")
        binary_dir.mkdir(parents=True)
        shutil.copy(binary, binary_dir / "dispatchd")
        os.chmod(binary_dir / "dispatchd", 0o755)
        volume = scratch / runtime.volume.lstrip("/")
        volume.mkdir(parents=True)
        os.chmod(volume, 0o750)
        if as_root:
            os.chown(volume, runtime.uid, runtime.gid)

        port = free_port()

        def rewrite(value: str) -> str:
            if value == runtime.volume or value.startswith(runtime.volume + "/"):
                return str(volume) + value[len(runtime.volume) :]
            return value

        env = {key: rewrite(value) for key, value in runtime.env.items()}
        env["DISPATCHD__SERVER__ADDR"] = re.sub(r":\d+$", f":{port}", env.get("DISPATCHD__SERVER__ADDR", "0.0.0.0:8080"))
        path = env.get("PATH", DOCKER_DEFAULT_PATH).split(":")
        env["PATH"] = ":".join(str(binary_dir) if p == runtime.binary_dir else p for p in path)
        env.setdefault("HOME", str(volume))
        workdir = rewrite(runtime.workdir)
        as_user = ["setpriv", f"--reuid={runtime.uid}", f"--regid={runtime.gid}", "--clear-groups"] if as_root else []
        if as_user and shutil.which("setpriv") is None:
            fail("setpriv (util-linux) is missing")

        def argv(words: list[str]) -> list[str]:
            resolved = shutil.which(words[0], path=env["PATH"])
            if resolved is None or not resolved.startswith(str(scratch)):
                fail(f"{words[0]} is not found on the image's PATH")
            return [*as_user, resolved, *words[1:]]

        log_path = scratch / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                argv(runtime.entrypoint + runtime.cmd), env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
            )

        def server_log() -> str:
            lines = log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-20:])

        def healthcheck(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
            try:
                return subprocess.run(
                    argv(runtime.healthcheck),
                    env=environment,
                    cwd=workdir,
                    capture_output=True,
                    text=True,
                    timeout=runtime.healthcheck_timeout,
                )
            except subprocess.TimeoutExpired:
                fail(f"the healthcheck took longer than the HEALTHCHECK's own timeout ({runtime.healthcheck_timeout:g} s)")

        started = time.monotonic()
        while True:
            if server.poll() is not None:
                fail(f"`dispatchd serve` exited with {server.returncode} before it was healthy:\n{server_log()}")
            result = healthcheck(env)
            if result.returncode == 0:
                break
            if time.monotonic() - started > HEALTHY_WITHIN_SECS:
                fail(
                    f"the healthcheck did not pass within {HEALTHY_WITHIN_SECS} s (last exit {result.returncode}: "
                    f"{(result.stdout + result.stderr).strip()})\n{server_log()}"
                )
            time.sleep(0.5)
        ok(f"`{' '.join(runtime.healthcheck)}` exits 0 once the server is up ({time.monotonic() - started:.1f} s)")

        elsewhere = dict(env, DISPATCHD__SERVER__ADDR=re.sub(r":\d+$", f":{free_port()}", env["DISPATCHD__SERVER__ADDR"]))
        result = healthcheck(elsewhere)
        if result.returncode != 1:
            fail(f"against a port where nothing listens the healthcheck exited {result.returncode}, not 1")
        ok(f"`{' '.join(runtime.healthcheck)}` exits 1 when nothing answers")

        database = Path(env["DISPATCHD__DATABASE__SQLITE_PATH"])
        secret = database.parent / "jwt.secret"
        for made in (database, secret):
            if not made.is_file():
                fail(f"{made.name} did not appear in the volume (found {sorted(p.name for p in volume.iterdir())})")
            owner = made.stat().st_uid
            if as_root and owner != runtime.uid:
                fail(f"{made.name} in the volume is owned by uid {owner}, not {runtime.uid}")
        if secret.stat().st_mode & 0o077:
            fail(f"jwt.secret is readable by others (mode {secret.stat().st_mode & 0o777:o})")
        ok(f"{database.name} and jwt.secret (0600) are in the volume" + (f", owned by uid {runtime.uid}" if as_root else ""))

        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=DOCKER_STOP_GRACE_SECS)
        except subprocess.TimeoutExpired:
            server.kill()
            fail(f"SIGTERM did not stop the server within docker stop's {DOCKER_STOP_GRACE_SECS} s:\n{server_log()}")
        if code != 0:
            fail(f"after SIGTERM the server exited with {code}, not 0:\n{server_log()}")
        ok(f"SIGTERM: exit 0 in {time.monotonic() - stopping:.1f} s (docker stop waits {DOCKER_STOP_GRACE_SECS} s)")
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", nargs="?", type=Path, help="the dispatchd binary to run as the image runs it")
    parser.add_argument("--static-only", action="store_true", help="check the Dockerfile without running anything")
    parser.add_argument("--dockerfile", type=Path, default=Path("Dockerfile"))
    options = parser.parse_args()
    if options.binary is None and not options.static_only:
        parser.error("give the dispatchd binary to run (or --static-only)")
    root = options.dockerfile.resolve().parent
    try:
        runtime = check_structure(root, options.dockerfile)
        if options.binary is not None:
            run_like_the_image(options.binary.resolve(), runtime)
    except CheckFailed as failure:
        print(f"FAIL  {failure}", file=sys.stderr, flush=True)
        return 1
    print("container checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
