"""genrec.models.processes on 2 CPU processes (gloo) under `accelerate launch`: the process group's timeout,
decisions taken by the main process, a main-process failure reaching the other, and the shared-folder check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    from genrec.errors import DataError
    from genrec.models.processes import (PeerFailure, broadcast, check_shared_folder, group_timeout, main_only,
                                         process_state)

    out = Path(sys.argv[1])
    state = process_state(77, cpu=True)
    rank = state.process_index
    result = {"processes": state.num_processes, "timeout": group_timeout().total_seconds(),
              "decided": broadcast(state, f"rank {rank}"),
              "returned": main_only(state, lambda: f"work of rank {rank}")}

    def fail():
        raise ValueError("the store is down")

    try:
        main_only(state, fail)
    except PeerFailure as err:
        result["failure"] = f"PeerFailure: {err}"
    except ValueError as err:
        result["failure"] = f"ValueError: {err}"
    check_shared_folder(state, out / "shared")
    try:
        check_shared_folder(state, out / f"local-{rank}")  # as on two machines without a shared file system
    except DataError as err:
        result["not_shared"] = str(err)
    (out / f"rank-{rank}.json").write_text(json.dumps(result))
''')


def test_two_processes_share_a_timeout_decisions_failures_and_folders(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                           str(ROOT / "configs" / "accelerate" / "cpu2.yaml"), "--main_process_port", str(port),
                           str(tmp_path / "script.py"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    assert [r["timeout"] for r in ranks] == [77.0, 77.0]  # not torch's default (30 min gloo, 10 min NCCL)
    assert [r["decided"] for r in ranks] == ["rank 0", "rank 0"]
    assert [r["returned"] for r in ranks] == ["work of rank 0", None]
    assert ranks[0]["failure"] == "ValueError: the store is down"
    assert ranks[1]["failure"] == "PeerFailure: the main process failed: ValueError: the store is down"
    assert all("processes [1] do not see the files the main process writes" in r["not_shared"] for r in ranks)
    assert not list((tmp_path / "shared").iterdir())  # the probe file is gone
