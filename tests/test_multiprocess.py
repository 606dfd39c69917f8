"""Two processes under `accelerate launch --multi_gpu` (two CPU processes on gloo here): all stages, exact
validation counts, and a cache byte-identical to one process's; two simulated machines (one process each, on this
host) give the one machine's cache and weights, and refuse a run folder they do not share."""
import json
import os
import subprocess
import sys

import torch

from conftest import ROOT, random_teacher, run_here, tiny_overrides


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _settings(parquet_file, tmp_path, run_root):
    return tiny_overrides(parquet_file, run_root, epochs=1) + [
        "data.val_size=13",  # odd: DDP pads the last batch, gather_for_metrics must drop the padding
        "teacher.source=timm", f"teacher.checkpoint={random_teacher(tmp_path / 't.safetensors')}",
        "teacher.finetune.epochs=1", "teacher.batch_size=8", "cache.shard_size=16", "cache.views=2", "cache.topk=3",
        "student.epochs=1", "student.batch_size=8", "student.baseline=true"]


def _launch(where, args, machines: int = 1, rank: int = 0, port: int = 0) -> subprocess.Popen:
    """`accelerate launch` of distill/run.py ARGS in a new process: two CPU processes on one machine, or this
    host's share (one process) of `machines` simulated machines meeting at 127.0.0.1:`port`."""
    where.mkdir(parents=True, exist_ok=True)
    where_ = ["--num_machines", "1"] if machines == 1 else [
        "--num_machines", str(machines), "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(port)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", *where_,
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "distill" / "run.py"), *args]
    return subprocess.Popen(cmd, cwd=where, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _finish(*procs) -> list[subprocess.CompletedProcess]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=1800)  # a guard against a hang, no budget
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_run_every_stage(parquet_file, tmp_path):
    common = _settings(parquet_file, tmp_path, tmp_path / "runs")
    two = tmp_path / "two"
    (r,) = _finish(_launch(two, [*common, f"cache.root={two / 'cache'}"]))
    assert r.returncode == 0, r.stderr
    assert "global batch 16, lr 0.025 (sgd), 2 process(es)" in r.stderr  # two ranks really formed one group
    assert "(0 of this process's 2 already done)" in r.stderr  # 47 images, 3 shards: rank 0 labels 2 of them
    run = tmp_path / "runs" / "tiny"
    for stage in ("teacher", "student", "baseline"):
        meta = json.loads((run / stage / "meta.json").read_text())
        assert meta["metrics"]["val_count"] == 13, stage
        assert meta["metrics"]["step"] == 47 // 16, stage  # global batch 16 over 47 training images

    one = tmp_path / "one"  # one process, the same teacher: the same cache bytes
    r1 = run_here(*common, f"cache.root={one / 'cache'}", f"teacher.dir={run / 'teacher'}", "name=one", "stage=cache")
    assert r1.returncode == 0, r1.stderr
    assert "teacher: reusing" in r1.stderr
    (a,), (b,) = ([p for p in (root / "cache").iterdir() if p.is_dir()] for root in (one, two))
    assert a.name == b.name and _files(a) == _files(b)


def test_two_machines_give_one_machines_cache_and_weights(parquet_file, tmp_path):
    """Two simulated machines of one process each (rank 0 and 1 meeting over 127.0.0.1, gloo) run every stage into
    one shared run folder: the cache and every model's weights are those of one machine with two processes."""
    from distill.store import artifacts
    runs = {}
    for kind in ("one", "two"):
        args = [*_settings(parquet_file, tmp_path, tmp_path / kind / "runs"), f"cache.root={tmp_path / kind / 'cache'}"]
        if kind == "one":
            procs = [_launch(tmp_path / kind, args)]
        else:
            port = _free_port()
            procs = [_launch(tmp_path / kind / f"m{rank}", args, machines=2, rank=rank, port=port) for rank in (0, 1)]
        done = _finish(*procs)
        for r in done:
            assert r.returncode == 0, r.stderr
        assert "2 process(es)" in done[0].stderr  # the main process's log: the two machines formed one group
        runs[kind] = tmp_path / kind
    (a,), (b,) = ([p for p in (runs[k] / "cache").iterdir() if p.is_dir()] for k in ("one", "two"))
    assert a.name == b.name and _files(a) == _files(b)
    for stage in ("teacher", "student", "baseline"):
        x, y = (artifacts.load_weights(runs[k] / "runs" / "tiny" / stage) for k in ("one", "two"))
        assert x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x), stage


def test_a_run_folder_the_machines_do_not_share_is_refused_before_any_work(parquet_file, tmp_path):
    """Each machine its own run_root (what machines without a shared filesystem see): one line on each, exit 2."""
    port = _free_port()
    procs = [_launch(tmp_path / f"m{rank}", [*_settings(parquet_file, tmp_path, tmp_path / f"m{rank}" / "runs"),
                                             f"cache.root={tmp_path / f'm{rank}' / 'cache'}"],
                     machines=2, rank=rank, port=port) for rank in (0, 1)]
    for rank, r in enumerate(_finish(*procs)):
        want = (f"error: run_root: {tmp_path / f'm{rank}' / 'runs' / 'tiny'} is not shared between the machines: "
                "process 1 does not see the file process 0 wrote there; the run folder must be shared")
        # the launcher adds its own report of a failed child (torch.distributed.elastic); distill's process none
        assert r.returncode != 0 and want in r.stderr and "distill/" not in r.stderr.split(want)[0], rank
        assert not (tmp_path / f"m{rank}" / "cache").exists()  # no work done


def test_a_cache_root_the_machines_do_not_share_is_refused_before_any_work(parquet_file, tmp_path):
    """One shared run_root, but each machine its own cache.root: one line on each naming cache.root, exit 2, as
    for the run folder (the cache root was not checked: each machine labelled and read its own shards)."""
    port = _free_port()
    procs = [_launch(tmp_path / f"m{rank}", [*_settings(parquet_file, tmp_path, tmp_path / "runs"),
                                             f"cache.root={tmp_path / f'm{rank}' / 'cache'}"],
                     machines=2, rank=rank, port=port) for rank in (0, 1)]
    for rank, r in enumerate(_finish(*procs)):
        want = (f"error: cache.root: {tmp_path / f'm{rank}' / 'cache'} is not shared between the machines: process 1 "
                "does not see the file process 0 wrote there; the cache root must be shared (give every machine the "
                "same cache.root on a shared filesystem)")
        assert r.returncode != 0 and want in r.stderr and "distill/" not in r.stderr.split(want)[0], rank
    assert not (tmp_path / "runs" / "tiny" / "teacher").exists()  # no work done


def _launched_env(tmp_path, *flags) -> dict:
    """The environment `accelerate launch FLAGS script` gives the script it starts."""
    script = tmp_path / "env.py"
    script.write_text("import json, os\nprint(json.dumps(dict(os.environ)))\n")
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *flags, str(script)], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_accelerate_starting_fewer_processes_than_asked_is_said_once(tmp_path):
    """`accelerate launch --num_processes 2 --cpu` (no --multi_gpu) starts one process, under OMP_NUM_THREADS=1."""
    from distill import preflight

    line = preflight.fewer_processes(1, _launched_env(tmp_path, "--num_processes", "2", "--cpu"))
    assert line and line.startswith("accelerate launch was asked for several processes but started one")
    assert preflight.fewer_processes(1, _launched_env(tmp_path, "--num_processes", "1", "--cpu")) is None
    assert preflight.fewer_processes(1, dict(os.environ)) is None  # `python distill/run.py`
