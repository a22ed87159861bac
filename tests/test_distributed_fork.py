"""A process forked after `init_distributed` made the default group must not use that group (its
collectives hang): `init_distributed` in it fails at once with a one-line reason."""
import subprocess
import sys

SCRIPT = """
import os
from jest_ds.train.distributed import init_distributed
assert init_distributed(30.0) == (0, 1)
assert init_distributed(30.0) == (0, 1)  # again in the same process: the same group
pid = os.fork()
if pid == 0:
    try:
        init_distributed(30.0)
    except RuntimeError as exc:
        msg = str(exc)
        os._exit(3 if "forked" in msg and "spawn" in msg and "\\n" not in msg else 4)
    os._exit(5)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_refuses_the_parents_process_group():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                       env={"PATH": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "child exit 3" in r.stdout, (r.stdout, r.stderr[-3000:])
