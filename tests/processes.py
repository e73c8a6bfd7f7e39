"""The CLI as a separate process in its own group, and the crash: SIGKILL of the driver."""
import os
import signal
import subprocess
import sys


def cli(*args, **popen) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "search.cli", *args], env=env,
                            start_new_session=True, **popen)


def kill_group(proc: subprocess.Popen) -> None:
    """The driver is SIGKILLed (the crash; nothing if it has ended), then whatever it started is
    stopped by its group id."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_to_end(proc: subprocess.Popen, timeout: float, log) -> None:
    """Wait for a CLI process to exit 0 (else fail with its log's tail), then stop its group."""
    try:
        assert proc.wait(timeout=timeout) == 0, open(log.name).read()[-3000:]
    finally:
        kill_group(proc)
