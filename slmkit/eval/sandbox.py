"""Run untrusted code (a model's completion) with its tests in a separate, limited process.

Each run is a fresh interpreter (`python -I -S -B -c RUNNER`) in its own session, in a throwaway
working directory, fed the program on standard input. Before the untrusted code runs, the runner:

- leaves the network: a new network namespace (`unshare(CLONE_NEWNET)`, allowed for root), else a
  new user + network namespace (allowed for ordinary users where the kernel permits user
  namespaces); inside either there is only a loopback interface that is down, so no address can be
  reached. Where neither is allowed, the audit hook below is the only guard;
- sets resource limits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), the size of any file
  written (RLIMIT_FSIZE), no core files, no new processes for ordinary users (RLIMIT_NPROC = 0; root
  is exempt from that limit, the audit hook refuses process creation for everyone);
- sets no_new_privs (no setuid program can gain privileges);
- installs an audit hook (PEP 578) that refuses sockets, opening a file for writing outside the
  working directory, deleting/renaming/linking/chmod-ing paths outside it, starting processes,
  signalling other processes, changing resource limits and ctypes. A refusal raises PermissionError
  and is remembered, so code that catches it is still reported as forbidden.

The parent kills the whole process group when the wall-clock limit passes, and removes the working
directory afterwards. The audit hook guards against accidents and ordinary harmful code, not against
a determined attacker who targets this harness (in-process Python hooks can be evaded); for that,
run the suite inside a container or VM.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.utils import affinity_cpus

# The outcome of one run. Every status other than PASSED is a failure.
PASSED = "passed"                      # the program ran and every test passed
FAILED = "failed"                      # an assertion of the tests failed (detail: the assertion)
SYNTAX_ERROR = "syntax_error"          # the program does not parse
MISSING_FUNCTION = "missing_function"  # it parses but does not define the entry point (with a body)
ERROR = "error"                        # an exception other than a failed assertion
TIMEOUT = "timeout"                    # the CPU-time or wall-clock limit was reached; the process was killed
MEMORY = "memory"                      # the memory limit was reached (MemoryError)
FORBIDDEN = "forbidden"                # the audit hook refused an operation (socket, write outside, process...)
CRASHED = "crashed"                    # the process ended without a result (a signal, os._exit, ...)
STATUSES = (PASSED, FAILED, SYNTAX_ERROR, MISSING_FUNCTION, ERROR, TIMEOUT, MEMORY, FORBIDDEN, CRASHED)

DETAIL_CHARS = 500  # details (assertions, exception messages) are cut to this length


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use. Seconds, bytes.

    cpu_seconds: CPU time (the kernel stops the process; a second later it is killed outright).
    wall_seconds: real time, counted from the start of the interpreter; the process group is killed.
    memory_bytes: the address space (RLIMIT_AS); an allocation past it raises MemoryError.
    file_size_bytes: the largest file the program may write (inside its working directory).
    The defaults leave the suite's solutions (milliseconds each) a wide margin while an infinite
    loop costs at most 2 s of one CPU.
    """

    cpu_seconds: int = 2
    wall_seconds: float = 10.0
    memory_bytes: int = 512 * 2**20
    file_size_bytes: int = 16 * 2**20

    def validate(self) -> SandboxLimits:
        if not isinstance(self.cpu_seconds, int) or isinstance(self.cpu_seconds, bool) or self.cpu_seconds < 1:
            raise SlmError(f"cpu_seconds = {self.cpu_seconds!r}: must be a whole number of seconds >= 1")
        if not self.wall_seconds > 0:
            raise SlmError(f"wall_seconds = {self.wall_seconds!r}: must be > 0")
        if self.memory_bytes < 64 * 2**20:
            raise SlmError(f"memory_bytes = {self.memory_bytes}: the interpreter needs at least 64 MiB "
                           f"({64 * 2**20} bytes)")
        if self.file_size_bytes < 0:
            raise SlmError(f"file_size_bytes = {self.file_size_bytes}: must be >= 0")
        return self


@dataclass
class SandboxResult:
    """One run's outcome: status (one of STATUSES), detail (the failed assertion, the exception, the
    refused operation, ...), duration_s (wall-clock seconds) and isolation (which guards were in
    place, e.g. "network namespace + audit hook")."""

    status: str
    detail: str = ""
    duration_s: float = 0.0
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def inspect_program(program: str, entry_point: str | None) -> tuple[bool, bool, str]:
    """(parses, defines_function, detail) of a program, without running it.

    defines_function: a top-level `def entry_point` whose body holds a statement besides its
    docstring (a prompt's docstring alone, with nothing after it, does not count). True when
    entry_point is None.
    """
    try:
        tree = ast.parse(program)
    except SyntaxError as error:
        return False, False, f"SyntaxError: {error.msg} (line {error.lineno})"
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, absurd nesting
        return False, False, f"{type(error).__name__}: {error}"[:DETAIL_CHARS]
    if entry_point is None:
        return True, True, ""
    body = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            body = node.body  # the last definition is the one that counts
    if body is None:
        return True, False, f"no function named {entry_point!r} is defined"
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return True, False, f"{entry_point!r} has no body after its docstring"
    return True, True, ""


def run_in_sandbox(program: str, tests: str = "", entry_point: str | None = None,
                   limits: SandboxLimits | None = None, *, audit_hook: bool = True,
                   work_root: str | os.PathLike | None = None) -> SandboxResult:
    """Run `program`, then `tests` (Python statements, usually asserts, in the program's namespace),
    in a fresh limited interpreter, and say how it went.

    entry_point: the function the program must define (checked before the tests run).
    audit_hook=False leaves out the in-process hook so that tests can prove the OS layers alone
    (the network namespace); never turn it off for model output.
    work_root: where the throwaway working directory is made (the system's temporary folder by default).
    Never raises for anything the program does; raises SlmError for invalid limits.
    """
    limits = (limits or SandboxLimits()).validate()
    parses, _, detail = inspect_program(program, None)
    if not parses:
        return SandboxResult(SYNTAX_ERROR, detail)
    nonce = secrets.token_hex(16)
    payload = json.dumps({
        "nonce": nonce, "program": program, "tests": tests, "entry_point": entry_point,
        "audit_hook": audit_hook, "cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_bytes,
        "file_size_bytes": limits.file_size_bytes, "detail_chars": DETAIL_CHARS,
    }).encode("utf-8", "surrogatepass")
    workdir = Path(tempfile.mkdtemp(prefix="slmkit-sandbox-", dir=work_root))
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
    start = time.monotonic()
    timed_out = False
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-c", _RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=workdir, env=env, start_new_session=True, close_fds=True)
        try:
            output, _ = process.communicate(payload, timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process.pid)
            output, _ = process.communicate()
        finally:
            _kill_group(process.pid)  # anything it left behind in its session
    finally:
        _remove_tree(workdir)
    duration = time.monotonic() - start
    result = _read_result(output, nonce)
    if result is not None:
        return SandboxResult(result["status"], result["detail"], duration, result["isolation"])
    status, detail = _status_without_result(process.returncode, timed_out, limits)
    return SandboxResult(status, detail, duration)


def run_many(jobs: Iterable[tuple[str, str, str | None]], limits: SandboxLimits | None = None,
             workers: int | None = None, on_result: Callable[[int, SandboxResult], None] | None = None
             ) -> list[SandboxResult]:
    """Run (program, tests, entry_point) jobs in the sandbox, `workers` at a time (default: the CPUs
    this process may use), and return their results in the order of the jobs. on_result(index,
    result) is called as each finishes."""
    jobs = list(jobs)
    workers = max(1, min(workers or affinity_cpus(), len(jobs) or 1))

    def one(index: int) -> SandboxResult:
        program, tests, entry_point = jobs[index]
        result = run_in_sandbox(program, tests, entry_point, limits)
        if on_result is not None:
            on_result(index, result)
        return result

    if workers == 1:
        return [one(i) for i in range(len(jobs))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(jobs))))


def sandbox_isolation() -> str:
    """Which guards a run gets on this machine, e.g. "network namespace + audit hook" (as root),
    "user and network namespace + audit hook" (an ordinary user where user namespaces are allowed)
    or "audit hook only"."""
    return run_in_sandbox("pass").isolation


def _read_result(output: bytes, nonce: str) -> dict | None:
    marker = nonce.encode()
    for line in reversed(output.splitlines()):
        if line.startswith(marker):
            try:
                result = json.loads(line[len(marker):].decode("utf-8", "replace"))
            except json.JSONDecodeError:
                return None
            if isinstance(result, dict) and result.get("status") in STATUSES:
                return {"status": result["status"], "detail": str(result.get("detail", ""))[:DETAIL_CHARS],
                        "isolation": str(result.get("isolation", ""))}
            return None
    return None


def _status_without_result(returncode: int, timed_out: bool, limits: SandboxLimits) -> tuple[str, str]:
    """(status, detail) of a run that ended without reporting."""
    if timed_out:
        return TIMEOUT, f"killed after {limits.wall_seconds:g} s of wall-clock time"
    if returncode == -signal.SIGXCPU:
        return TIMEOUT, f"stopped at its CPU-time limit of {limits.cpu_seconds} s"
    if returncode == -signal.SIGKILL:
        return CRASHED, "killed (SIGKILL: the hard CPU limit, or the kernel's out-of-memory killer)"
    if returncode is not None and returncode < 0:
        return CRASHED, f"killed by {signal.Signals(-returncode).name}"
    return CRASHED, f"the process exited with status {returncode} before the tests finished"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _remove_tree(path: Path) -> None:
    """Remove the working directory, even where the program made parts of it read-only."""
    def make_writable(function, name, _):
        try:
            os.chmod(os.path.dirname(name), stat.S_IRWXU)
            os.chmod(name, stat.S_IRWXU)
            function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable)


# The child's side: read the payload, isolate, limit, install the hook, run, report one line.
# It runs with -I -S -B: no environment variables, no site-packages, no bytecode files written.
_RUNNER = r'''
import json, os, resource, signal, sys


def main():
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
    nonce, detail_chars = payload["nonce"], payload["detail_chars"]
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    write, dumps, exit_now = os.write, json.dumps, os._exit
    was_root = os.geteuid() == 0

    guards = []
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) == 0:                  # CLONE_NEWNET
            guards.append("network namespace")
        elif libc.unshare(0x10000000 | 0x40000000) == 0:   # CLONE_NEWUSER | CLONE_NEWNET
            guards.append("user and network namespace")
        libc.prctl(38, 1, 0, 0, 0)                         # PR_SET_NO_NEW_PRIVS
    except Exception:
        pass
    cpu = payload["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (payload["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (payload["file_size_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not was_root:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead of killing
    if payload["audit_hook"]:
        guards.append("audit hook")
    isolation = " + ".join(guards) if len(guards) > 1 or not payload["audit_hook"] else "audit hook only"
    violations = []

    def report(status, detail=""):
        if violations:
            status, detail = "forbidden", violations[0]
        line = dumps({"status": status, "detail": detail[:detail_chars], "isolation": isolation})
        write(out_fd, (nonce + line + "\n").encode("utf-8", "replace"))
        exit_now(0)

    try:
        program = compile(payload["program"], "<completion>", "exec")
        tests = compile(payload["tests"], "<tests>", "exec")
    except BaseException as error:
        report("syntax_error", f"{type(error).__name__}: {error}")
    test_lines = payload["tests"].splitlines()
    entry_point = payload["entry_point"]
    if payload["audit_hook"]:
        sys.addaudithook(make_hook(os.path.realpath(os.getcwd()), violations))
    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    del payload
    try:
        exec(program, namespace)
    except BaseException as error:
        report(*describe(error, test_lines, in_tests=False))
    if entry_point is not None and not callable(namespace.get(entry_point)):
        report("missing_function", f"the program does not define a function named {entry_point!r}")
    try:
        exec(tests, namespace)
    except BaseException as error:
        report(*describe(error, test_lines, in_tests=True))
    report("passed")


def describe(error, test_lines, in_tests):
    """(status, detail) of an exception raised by the program or the tests."""
    if isinstance(error, MemoryError):
        return "memory", "MemoryError: the memory limit was reached"
    test_line = program_line = None
    tb = error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == "<tests>" and 0 < tb.tb_lineno <= len(test_lines):
            test_line = test_lines[tb.tb_lineno - 1].strip()
        elif name == "<completion>":
            program_line = tb.tb_lineno
        tb = tb.tb_next
    if in_tests and isinstance(error, AssertionError) and test_line is not None:
        message = str(error)
        return "failed", test_line + (f" ({message})" if message else "")
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if program_line is not None:
        text += f" at line {program_line} of the program"
    if test_line is not None:
        text += f", in: {test_line}"
    return "error", text


def make_hook(root, violations):
    """The audit hook: refuse network, writes outside `root`, processes, signals, limits, ctypes."""
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    refused_events = frozenset({
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
        "os.killpg", "signal.pthread_kill", "subprocess.Popen", "pty.spawn", "resource.setrlimit",
        "resource.prlimit", "os.startfile", "os.setxattr", "os.removexattr",
        "webbrowser.open", "sys.addaudithook", "urllib.Request", "ftplib.connect", "smtplib.connect",
        "imaplib.open", "poplib.connect", "telnetlib.Telnet.open", "http.client.connect",
    })
    refused_imports = frozenset({"_posixsubprocess", "ctypes", "_ctypes", "multiprocessing", "_multiprocessing"})
    # event: positions of its path arguments, and of its dir_fd argument (None when it has none)
    path_events = {
        "os.remove": ((0,), 1), "os.rmdir": ((0,), 1), "os.rename": ((0, 1), 2), "os.truncate": ((0,), None),
        "os.mkdir": ((0,), 2), "os.symlink": ((0, 1), 2), "os.link": ((0, 1), 2), "os.chmod": ((0,), 2),
        "os.chown": ((0,), 3), "os.utime": ((0,), 3), "os.chflags": ((0,), None), "os.lchflags": ((0,), None),
        "os.lchmod": ((0,), None), "os.mkfifo": ((0,), 2), "os.mknod": ((0,), 3),
        "shutil.rmtree": ((0,), None), "shutil.copyfile": ((1,), None), "shutil.copytree": ((1,), None),
        "shutil.move": ((0, 1), None), "shutil.chown": ((0,), None),
    }

    def inside(path):
        if isinstance(path, int):
            return True  # an open descriptor: its file was checked when it was opened
        resolved = realpath(fsdecode(path))
        return resolved == root or resolved.startswith(root + sep)

    def refuse(what):
        violations.append(what)
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event, args):
        if event == "open":
            path, flags = args[0], args[2]
            if path is not None and isinstance(flags, int) and flags & write_flags and not inside(path) \
                    and fsdecode(path) != "/dev/null":
                refuse(f"opening {fsdecode(path)!r} for writing outside the working directory")
        elif event in path_events:
            positions, dir_fd = path_events[event]
            if dir_fd is not None and len(args) > dir_fd and args[dir_fd] not in (None, -1):
                refuse(f"{event} relative to a directory descriptor")
            for position in positions:
                if position < len(args) and args[position] is not None and not inside(args[position]):
                    refuse(f"{event} on {fsdecode(args[position])!r} outside the working directory")
        elif event.startswith("socket."):
            refuse(f"network access ({event})")
        elif event in refused_events or event.startswith("ctypes."):
            refuse(event)
        elif event == "import" and args[0] in refused_imports:
            refuse(f"importing {args[0]}")

    return hook


main()
'''
