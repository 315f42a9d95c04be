"""Jobs: one playbook run through ``ansible_runner.run_async``, with a status machine.

Modelled on ansible-runner's own runner: a job goes ``starting`` → ``running`` →
``successful`` | ``failed`` | ``canceled`` | ``timeout``; every playbook event is kept and
handed to whoever subscribed (the CLI's progress display, an HTTP API, a bot) as it
arrives; :meth:`Job.wait` returns the typed result the caller's ``finish`` function made
from the events.

Each job gets a fresh private data dir under the driver's own folder (outside the
repository; ansible-runner would otherwise reuse ``env/`` files of an earlier run), and only
the newest :data:`KEEP_RUNS` are kept. The driver never imports collection code: what a
job runs is a playbook name plus extra variables. From a source checkout that is the checkout's
``playbooks/<name>`` under its ``ansible.cfg``; from an installed wheel it is the installed
collection's playbook by name (``exchangeops.patching.rolling_patch``), see :func:`start`.

Cancel is two-staged, because a rollout killed mid-batch leaves a drained node and a held
lock behind: :meth:`Job.cancel` first writes the run's cancel file, which the rollout
playbooks check before they touch the next node (the node fails as "canceled by the
operator", so the playbook's own rollback and lock rules apply and the run ends cleanly);
only when the playbook has not ended after ``grace`` seconds, or for read-only jobs at once,
is the process group killed.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shlex
import shutil
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _checkout_root() -> Path | None:
    """The source checkout the driver runs from (an editable install, or ``python -m exchpatch`` in a clone):
    the folder above ``exchpatch/`` when it holds the collection (``galaxy.yml``, ``playbooks/``); ``None`` for
    an installed wheel, whose playbooks come from the installed collection instead."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "galaxy.yml").is_file() and (root / "playbooks").is_dir() else None


CHECKOUT = _checkout_root()
# Where checkout-relative defaults live (feeds_cli's feed cache): the checkout, else the driver's data
# folder (data_dir() without creating it), never site-packages.
REPO = CHECKOUT or Path(os.environ.get("EXCHPATCH_DATA_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exchpatch"))
# The embedded default inventory: the local testbed's, which exists only in a checkout.
DEFAULT_INVENTORY = CHECKOUT / "inventories" / "testbed" if CHECKOUT else None
COLLECTION = "exchangeops.patching"
# What the checkout's ansible.cfg sets for every run, applied as environment outside a checkout (the
# installed collection has no ansible.cfg) wherever the caller's own configuration (ANSIBLE_CONFIG or
# ./ansible.cfg, ~/.ansible.cfg, /etc/ansible/ansible.cfg, ANSIBLE_* variables) leaves the setting at
# ansible-core's default: ansible-core setting -> (environment variable, value). The callbacks are
# added to the caller's list, not instead of it: the audit trail and the lease renewal need them.
COLLECTION_SETTINGS = {
    "CALLBACKS_ENABLED": ("ANSIBLE_CALLBACKS_ENABLED", f"{COLLECTION}.audit,{COLLECTION}.lease"),
    "ANSIBLE_PIPELINING": ("ANSIBLE_PIPELINING", "True"),
    "DEFAULT_FORKS": ("ANSIBLE_FORKS", "50"),
    "DEFAULT_TIMEOUT": ("ANSIBLE_TIMEOUT", "30"),
    "INTERPRETER_PYTHON": ("ANSIBLE_PYTHON_INTERPRETER", "auto_silent"),
    "RETRY_FILES_ENABLED": ("ANSIBLE_RETRY_FILES_ENABLED", "False"),
}
KEEP_RUNS = 30
CANCEL_FILE = "cancel"
EXTRAVARS_FILE = "env/extravars"
# Jinja's block, variable and comment openers and the file-level override header: any of them in
# a caller's string is refused, even though every value also reaches the playbook marked unsafe.
TEMPLATE_MARKERS = ("{{", "{%", "{#", "#jinja2:")
# The driver's own environment reaches a playbook only through these names (plus what the
# driver and ansible-runner set): a chatops host's Slack secret or a DSN in the environment
# must not land in a play, nor in the runner's `command` artifact.
ENV_PASSTHROUGH = frozenset({
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR", "USER", "LOGNAME", "SSH_AUTH_SOCK",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
})
ENV_PASSTHROUGH_PREFIXES = ("ANSIBLE_",)
# The collection's rule (plugins/module_utils/_redact.py SECRET_KEY): the driver imports no collection code.
_SECRET_NAME = re.compile(
    r"token|passw(?:or)?d|passphrase|secret|credential|vault|private[_-]?key|api[_-]?key|dsn|(?<!un)auth(?!or(?!i[sz]))"
    r"|(?:^|[_.-])(?:pass|pwd)(?:$|[_.-])",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
REDACTED = "<redacted>"


class JobStatus(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMEOUT = "timeout"

    @property
    def done(self) -> bool:
        return self not in (JobStatus.STARTING, JobStatus.RUNNING)


class JobError(Exception):
    """Base of the driver's errors; ``str()`` names the thing and the fix."""


class BadInput(JobError, ValueError):
    """A parameter was refused before anything ran (exit code 2)."""


def refuse_template_markers(value: Any, what: str) -> None:
    """Raise :class:`BadInput` when ``value`` (a string, or any string inside lists and mappings,
    keys included) holds a template marker. Everything a caller gives is data, never a template."""
    if isinstance(value, str):
        for marker in TEMPLATE_MARKERS:
            if marker in value:
                raise BadInput(f"{what} contains the template marker {marker!r}; exchpatch passes every value "
                               "as plain data, so remove it (no Jinja in paths, ids or text)")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            refuse_template_markers(key, what)
            refuse_template_markers(item, f"{what}.{key}")
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            refuse_template_markers(item, what)
    elif isinstance(value, os.PathLike):
        refuse_template_markers(os.fspath(value), what)


class _Unsafe(str):
    """A string written to the extra-vars file with ansible-core's ``!unsafe`` tag: never templated."""


class _ExtravarsDumper(yaml.SafeDumper):
    pass


_ExtravarsDumper.add_representer(_Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value),
                                                                                        style='"'))


def _mark_unsafe(value: Any) -> Any:
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, Mapping):
        return {str(k): _mark_unsafe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mark_unsafe(v) for v in value]
    return value


def write_extravars(path: Path, extravars: Mapping[str, Any]) -> None:
    """Write ``extravars`` to a new 0600 YAML file, every string tagged ``!unsafe``.

    ansible-runner passes ``env/extravars`` as ``-e @file``: the values never appear on the
    ``ansible-playbook`` command line (``ps``), and ansible-core never renders them."""
    text = yaml.dump(_mark_unsafe(dict(extravars)), Dumper=_ExtravarsDumper, default_flow_style=False,
                     allow_unicode=False, sort_keys=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write("---\n" + text)


def redact_text(text: str) -> str:
    """``text`` with the password (or token) inside any ``scheme://user:password@`` URL redacted."""
    def repl(m: re.Match[str]) -> str:
        user = m.group("userinfo").split(":", 1)[0]
        return f"{m.group('scheme')}{user}:{REDACTED}@" if ":" in m.group("userinfo") else \
            f"{m.group('scheme')}{REDACTED}@"
    return _URL_CREDENTIALS.sub(repl, text)


def redact(value: Any, _depth: int = 0) -> Any:
    """``value`` with secret-named keys and URL credentials redacted (events and artifacts)."""
    if _depth > 64:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_NAME.search(k) and v not in (None, "")
                    and not isinstance(v, bool) else redact(v, _depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, _depth + 1) for v in value]
    return value


def child_env(runner_env: Mapping[str, str], ours: Mapping[str, str],
              parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The playbook's environment: what the driver and ansible-runner set, plus a short allow-list
    of the driver's own (locale, proxies, ``ANSIBLE_*``); nothing else of the caller's environment."""
    parent = os.environ if parent is None else parent
    keep = {}
    for key, value in runner_env.items():
        inherited = key in parent and parent[key] == value and key not in ours
        if not inherited or key in ENV_PASSTHROUGH or key.startswith(ENV_PASSTHROUGH_PREFIXES):
            keep[key] = value
    return keep


def data_dir() -> Path:
    """The driver's working folder: ``$EXCHPATCH_DATA_DIR`` or ``~/.cache/exchpatch``."""
    base = os.environ.get("EXCHPATCH_DATA_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exchpatch")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _private_data_dir(ident: str) -> Path:
    runs = data_dir() / "runs"
    runs.mkdir(exist_ok=True, mode=0o700)
    old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    path = runs / ident
    path.mkdir(mode=0o700)
    return path


@dataclass
class JobEvent:
    """One playbook event, flattened from ansible-runner's event dict."""

    counter: int
    event: str
    created: str
    play: str | None = None
    task: str | None = None
    host: str | None = None
    changed: bool | None = None
    ignored: bool = False
    res: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_runner(cls, ev: dict[str, Any]) -> JobEvent:
        data = ev.get("event_data") or {}
        res = redact(data.get("res")) if isinstance(data.get("res"), dict) else {}
        if ev.get("event") == "playbook_on_stats" and isinstance(data.get("artifact_data"), dict):
            res = {"artifact_data": redact(data["artifact_data"])}  # what the playbook published with set_stats
        return cls(
            counter=int(ev.get("counter") or 0), event=str(ev.get("event") or ""), created=str(ev.get("created") or ""),
            play=data.get("play"), task=data.get("task"), host=data.get("host"),
            changed=res.get("changed") if res else None, ignored=bool(data.get("ignore_errors")), res=res,
        )

    @property
    def failed(self) -> bool:
        return self.event in ("runner_on_failed", "runner_on_unreachable") and not self.ignored

    @property
    def msg(self) -> str:
        return str(self.res.get("msg") or self.res.get("reason") or "")

    def as_json(self) -> dict[str, Any]:
        return {"counter": self.counter, "event": self.event, "created": self.created, "play": self.play,
                "task": self.task, "host": self.host, "changed": self.changed, "failed": self.failed,
                "msg": self.msg or None}


def play_stats(job: Job) -> dict[str, Any]:
    """The data the playbook published with ``set_stats`` (ansible-runner's ``playbook_on_stats`` event, kept
    as the event's ``artifact_data``); empty when the playbook did not get that far (killed, a syntax error)."""
    for event in reversed(job.events):
        if event.event == "playbook_on_stats":
            data = event.res.get("artifact_data")
            return data if isinstance(data, dict) else {}
    return {}


EventHandler = Callable[["Job", JobEvent], None]
StatusHandler = Callable[["Job", JobStatus], None]


class Job:
    """One running playbook. Create with :func:`start`; read ``status``, ``events``, ``result``."""

    def __init__(self, kind: str, playbook: str, ident: str, finish: Callable[[Job], Any],
                 graceful_cancel: bool) -> None:
        self.kind = kind
        self.playbook = playbook
        self.id = ident
        self.status = JobStatus.STARTING
        self.events: list[JobEvent] = []
        self.result: Any = None
        self.error: BaseException | None = None
        self.rc: int | None = None
        self.private_data_dir: Path | None = None
        self.artifact_dir: str = ""
        self.started = time.time()
        self.finished: float | None = None
        self.cancel_requested = False
        self._finish = finish
        self._graceful = graceful_cancel
        self._kill_at: float | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._event_handlers: list[EventHandler] = []
        self._status_handlers: list[StatusHandler] = []
        self._thread: threading.Thread | None = None

    # -- subscription
    def on_event(self, handler: EventHandler) -> None:
        self._event_handlers.append(handler)

    def on_status(self, handler: StatusHandler) -> None:
        self._status_handlers.append(handler)

    # -- control
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ended; return its result (or raise what building it raised)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self, grace: float = 300.0) -> None:
        """Ask the job to stop. Rollouts stop before their next node and roll back what they
        touched; after ``grace`` seconds (read-only jobs: at once) the process group is killed."""
        with self._lock:
            if self.done:
                return
            first = not self.cancel_requested
            self.cancel_requested = True
            if self.private_data_dir is not None:
                (self.private_data_dir / CANCEL_FILE).write_text("canceled by the operator\n")
            now = time.time()
            deadline = now + (grace if self._graceful and first else 0.0)
            self._kill_at = deadline if self._kill_at is None else min(self._kill_at, deadline)

    def iter_events(self, poll: float = 0.2) -> Iterator[JobEvent]:
        """Yield events as they arrive until the job ended (for HTTP streaming and bots)."""
        seen = 0
        while True:
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.done and seen >= len(self.events):
                return
            time.sleep(poll)

    # -- ansible-runner callbacks
    def _runner_event(self, ev: dict[str, Any]) -> bool:
        event = JobEvent.from_runner(ev)
        self.events.append(event)
        for handler in self._event_handlers:
            handler(self, event)
        return True

    def _runner_status(self, data: dict[str, Any], runner_config: Any = None) -> None:
        status = str(data.get("status", ""))
        if status == "running":
            self._scrub_command_artifact()
            self._set_status(JobStatus.RUNNING)

    def _scrub_command_artifact(self) -> None:
        """ansible-runner keeps the command line and environment in ``artifacts/<id>/command``:
        rewrite it with secret-named variables and URL credentials redacted."""
        path = Path(self.artifact_dir) / "command" if self.artifact_dir else None
        if path is None or not path.is_file():
            return
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            doc["env"] = redact(doc.get("env") or {})
            doc["command"] = redact(doc.get("command") or [])
            tmp = path.with_name(".command.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            os.replace(tmp, path)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a copy that cannot be scrubbed is not kept

    def _runner_cancel(self) -> bool:
        return self._kill_at is not None and time.time() >= self._kill_at

    def _set_status(self, status: JobStatus) -> None:
        self.status = status
        for handler in self._status_handlers:
            handler(self, status)

    def _run(self, kwargs: dict[str, Any]) -> None:
        # RunnerConfig + Runner (ansible-runner's public pair behind run_async) so the playbook's
        # environment is pruned to child_env() before the runner spawns it and records it.
        import ansible_runner

        try:
            config = ansible_runner.RunnerConfig(**kwargs)
            config.prepare()
            config.env = child_env(config.env, kwargs["envvars"])
            runner = ansible_runner.Runner(config, event_handler=self._runner_event,
                                           status_handler=self._runner_status, cancel_callback=self._runner_cancel)
            self.artifact_dir = str(getattr(config, "artifact_dir", ""))
            runner.run()
            self.rc = runner.rc
            final = JobStatus(runner.status) if runner.status in JobStatus.__members__.values() else JobStatus.FAILED
            if self.cancel_requested and final is not JobStatus.SUCCESSFUL:
                final = JobStatus.CANCELED
            self.finished = time.time()
            self.status = final  # the result's job snapshot shows the final status
            try:
                self.result = self._finish(self)
            except Exception as e:  # noqa: BLE001 - handed to whoever waits, re-raised by wait()
                self.error = e
            self._set_status(final)
        except Exception as e:  # noqa: BLE001 - same: the job thread must always end the job
            self.error = e
            self.finished = time.time()
            self._set_status(JobStatus.FAILED)
        finally:
            self._done.set()

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "playbook": self.playbook, "status": str(self.status),
                "rc": self.rc, "started": _iso(self.started),
                "finished": _iso(self.finished) if self.finished else None,
                "cancel_requested": self.cancel_requested, "artifacts": self.artifact_dir or None}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _run_settings(playbook: str, inventory: str | Path | None) -> tuple[dict[str, str], dict[str, Any]]:
    """Where and how ``playbook`` runs: the environment it needs and ansible-runner's ``project_dir``,
    ``playbook`` and ``inventory``. Raises :class:`BadInput` when there is no inventory or no collection.

    In a checkout: today's way, the checkout's ``playbooks/<playbook>`` under its ``ansible.cfg``. Outside
    one (an installed wheel): the installed collection's playbook by its name
    (``exchangeops.patching.<stem>``, which ansible-playbook resolves over the collections paths) from the
    caller's current folder, as ``ansible-playbook`` started there would, with :data:`COLLECTION_SETTINGS`
    filling in what the caller's configuration leaves at ansible-core's defaults."""
    if CHECKOUT is not None:
        return {"ANSIBLE_CONFIG": str(CHECKOUT / "ansible.cfg")}, {
            "project_dir": str(CHECKOUT), "playbook": str(Path("playbooks") / playbook),
            "inventory": str(inventory or DEFAULT_INVENTORY)}
    from ansible.config.manager import ConfigManager
    from ansible.errors import AnsibleError

    cwd = os.getcwd()
    try:
        config = ConfigManager()  # the same search ansible-playbook makes from cwd: ANSIBLE_CONFIG, ./ansible.cfg, ...
        home = config.get_config_value("ANSIBLE_HOME")
        value = {name: config.get_config_value_and_origin(name, variables={"ANSIBLE_HOME": home})
                 for name in (*COLLECTION_SETTINGS, "DEFAULT_HOST_LIST", "COLLECTIONS_PATHS",
                              "COLLECTIONS_SCAN_SYS_PATH")}
    except AnsibleError as e:
        raise BadInput(f"the Ansible configuration cannot be read ({e}); fix it or point ANSIBLE_CONFIG at "
                       "another file") from None
    if inventory is None and value["DEFAULT_HOST_LIST"][1] == "default":
        raise BadInput("no inventory: give one (--inventory INV, or inventory= in the Python API), or set "
                       "ANSIBLE_INVENTORY or inventory in your ansible.cfg; the testbed's default inventory "
                       "exists only in a source checkout")
    stem = Path(playbook).stem
    roots = list(value["COLLECTIONS_PATHS"][0] or []) + (sys.path if value["COLLECTIONS_SCAN_SYS_PATH"][0] else [])
    tail = Path(*COLLECTION.split("."), "playbooks", playbook)
    if not any((Path(r) / tail).is_file() or (Path(r) / "ansible_collections" / tail).is_file() for r in roots if r):
        raise BadInput(f"playbook {COLLECTION}.{stem}: the collection {COLLECTION} is not installed where Ansible "
                       f"looks for collections ({', '.join(map(str, value['COLLECTIONS_PATHS'][0] or []))}); "
                       "install it (ansible-galaxy collection install exchangeops-patching-<version>.tar.gz) or "
                       "set ANSIBLE_COLLECTIONS_PATH to where it is")
    env = {}
    for name, (variable, ours) in COLLECTION_SETTINGS.items():
        setting, origin = value[name]
        if name == "CALLBACKS_ENABLED":
            env[variable] = ",".join(dict.fromkeys([*(setting or []), *ours.split(",")]))
        elif origin == "default":
            env[variable] = ours
    return env, {"project_dir": cwd, "playbook": f"{COLLECTION}.{stem}",
                 "inventory": None if inventory is None else str(inventory)}


def start(kind: str, playbook: str, extravars: dict[str, Any], finish: Callable[[Job], Any], *,
          inventory: str | Path | None = None, graceful_cancel: bool = False, timeout: float | None = None,
          vault_password_file: str | None = None, operator: str | None = None, check: bool = False,
          event_handler: EventHandler | None = None, status_handler: StatusHandler | None = None) -> Job:
    """Start the collection's playbook ``playbook`` (e.g. ``rolling_patch.yml``) in the background and return
    its :class:`Job`: the checkout's ``playbooks/<playbook>`` when the driver runs from a checkout, else the
    installed collection's ``exchangeops.patching.<stem>`` (:func:`_run_settings`).

    Every extra variable is checked for template markers (:class:`BadInput`, before anything is
    made) and written to the run's private ``env/extravars`` (0600, every string ``!unsafe``)."""
    for name, value in extravars.items():
        refuse_template_markers(value, name)
    refuse_template_markers(inventory, "inventory")
    refuse_template_markers(vault_password_file, "vault password file")
    refuse_template_markers(operator, "operator")
    settings_env, where = _run_settings(playbook, inventory)
    ident = new_job_id()
    job = Job(kind, playbook, ident, finish, graceful_cancel)
    if event_handler:
        job.on_event(event_handler)
    if status_handler:
        job.on_status(status_handler)
    job.private_data_dir = _private_data_dir(ident)
    extravars = {**extravars, "exchpatch_cancel_file": str(job.private_data_dir / CANCEL_FILE)}
    write_extravars(job.private_data_dir / EXTRAVARS_FILE, extravars)
    env = {
        **settings_env,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
        "EXCHPATCH_RUN_ID": ident,
    }
    # the control plane's settings (docs/control-plane.md): the DSN and the audit key's file travel in this
    # process's memory only (suppress_env_files), and every record of them is redacted by name
    for name in ("EXCHPATCH_AUDIT_FILE", "EXCHPATCH_AUDIT_KEY_FILE", "EXCHPATCH_STATE_STORE",
                 "EXCHPATCH_STATE_STORE_DSN", "XDG_STATE_HOME", "HOME"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    if operator:
        env["EXCHPATCH_OPERATOR"] = operator
    args = ["--check"] if check else []
    if vault_password_file:
        args += ["--vault-password-file", vault_password_file]
    cmdline = " ".join(shlex.quote(a) for a in args) or None
    kwargs: dict[str, Any] = dict(
        private_data_dir=str(job.private_data_dir), **where,
        envvars=env, ident=ident, quiet=True, cmdline=cmdline, timeout=timeout, suppress_env_files=True,
    )
    job._thread = threading.Thread(target=job._run, args=(kwargs,), name=f"exchpatch-{ident}", daemon=True)
    job._thread.start()
    return job
