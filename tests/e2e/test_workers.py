"""Several worker processes: `smtprs serve` with `workers = 2`.

The supervisor runs the workers, each listening with SO_REUSEPORT and owning
spool shard K; a worker that dies is started again; a restart with fewer
workers delivers what the others left in their shards; SIGTERM stops them all.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from smtprs.queue.spool import read_queue

from .harness import DOMAIN, Server, check, check_delivered, make_message, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def send(srv: Server, user: str, subject: str) -> tuple[bytes, str]:
    msg = make_message(subject, f"body of {subject}\r\n")
    with srv.connect() as c:
        r = c.send_message(SENDER, [f"{user}@{DOMAIN}"], stuff(msg), ehlo=True)
        check(r, 250, "2.0.0", subject)
        c.expect("QUIT", 221)
    return msg, r.qid


def wait_workers(srv: Server, n: int = 2) -> None:
    """Until ``n`` workers have announced their listener (the harness waits for the first)."""
    deadline = time.monotonic() + 15
    while srv.log().count(f"listening on 127.0.0.1:{srv.port}") < n:
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.05)


def worker_pids(srv: Server) -> dict[int, int]:
    """The newest pid of each worker, from the supervisor's log lines."""
    pids: dict[int, int] = {}
    for m in re.finditer(r"supervisor: started worker (\d+) \(pid (\d+)\)", srv.log()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


def shard_ids(srv: Server, shard: int) -> set[str]:
    return {env.queue_id for env, _ in read_queue(srv.spool_dir / f"shard-{shard}")}


def test_two_workers_share_the_port_and_deliver_each_message_once(make_server) -> None:
    srv = make_server({"workers": 2})
    wait_workers(srv)
    sent = {}

    def served() -> set[int]:
        return {int(p) for p in re.findall(r"smtprs\[(\d+)\]: \S+: from=<", srv.log())}

    # SO_REUSEPORT spreads connections by a hash of their addresses: twelve
    # at least, more (up to 40) if they all happened to reach one worker
    while len(sent) < 12 or (len(served()) < 2 and len(sent) < 40):
        msg, qid = send(srv, "alice", f"w{len(sent)}")
        sent[qid] = msg
    files = srv.wait_mail("alice", len(sent), settle=0.5)
    bodies = sorted(f.read_bytes() for f in files)
    assert len(bodies) == len(sent)
    for f in files:
        qid = re.search(r"\.Q([0-9A-Z]+)R0\.", f.name).group(1)
        check_delivered(f, sent[qid], sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid)
    # both workers took connections: each wrote into its own shard
    pids = worker_pids(srv)
    assert set(pids) == {0, 1}
    for shard in (0, 1):
        assert (srv.spool_dir / f"shard-{shard}" / "lock").exists()
    assert served() <= set(pids.values()) and len(served()) == 2, (served(), pids)
    assert srv.stop() == 0
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"


def test_a_worker_that_dies_is_started_again(make_server) -> None:
    srv = make_server({"workers": 2})
    wait_workers(srv)
    old = worker_pids(srv)[1]
    os.kill(old, signal.SIGKILL)
    srv.wait_log(lambda line: "worker 1 exited with status -9" in line, timeout=10)
    deadline = time.monotonic() + 15
    while worker_pids(srv)[1] == old and time.monotonic() < deadline:
        time.sleep(0.1)
    new = worker_pids(srv)[1]
    assert new != old and Path(f"/proc/{new}").exists()
    for i in range(6):  # the port is served all along; the new worker takes its share again
        send(srv, "bob", f"after-{i}")
    srv.wait_mail("bob", 6, settle=0.3)


def test_fewer_workers_after_a_restart_deliver_the_orphaned_shard(make_server) -> None:
    srv = make_server({"workers": 2, "queue": {"retry_min": 0.3, "retry_max": 0.6}})
    wait_workers(srv)
    blocker = srv.maildir("carol")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a maildir")  # delivery to carol fails until this goes
    qids = {send(srv, "carol", f"orphan-{i}")[1] for i in range(10)}
    deadline = time.monotonic() + 10
    while not (shard_ids(srv, 0) | shard_ids(srv, 1)) >= qids and time.monotonic() < deadline:
        time.sleep(0.1)
    in_shard_1 = shard_ids(srv, 1) & qids
    assert in_shard_1, "every connection went to worker 0: nothing to orphan"
    assert srv.stop() == 0
    srv.overrides["workers"] = 1
    srv.write_config()
    blocker.unlink()
    srv.start()
    files = srv.wait_mail("carol", len(qids), settle=0.5)
    got = {re.search(r"\.Q([0-9A-Z]+)R0\.", f.name).group(1) for f in files}
    assert got == qids
    assert "delivering what is left in spool shard 1" in srv.log()
    deadline = time.monotonic() + 5
    while shard_ids(srv, 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not shard_ids(srv, 1)


def _state(pid: int) -> str:
    """The state letter of /proc/PID/stat (Z: a zombie, exited but not reaped); "" if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return ""


@pytest.mark.parametrize("late", [False, True], ids=["together", "supervisor-late"])
def test_sigterm_to_the_whole_process_group_stops_without_a_restart_line(tmp_path: Path, late: bool) -> None:
    """As systemd stops a unit (KillMode=control-group or mixed): every process
    of the group gets SIGTERM at once.  Nothing restarts, so the log must not
    say so, and the supervisor exits 0 (issue 20 part 9b).  The workers may
    well finish their drain before the supervisor looks at its signal (a busy
    machine): ``late`` makes that certain by holding the supervisor stopped
    (SIGSTOP) until both workers have exited."""
    import subprocess

    from .harness import smtprs_command

    srv = Server(tmp_path / "group", {"workers": 2})
    with srv.log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*smtprs_command(), "serve", "--config", str(srv.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=srv.base,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,  # its own process group, as a service manager gives it
        )
    try:
        wait_workers(srv)
        pids = worker_pids(srv)
        assert set(pids) == {0, 1}
        if late:
            os.kill(proc.pid, signal.SIGSTOP)
        os.killpg(proc.pid, signal.SIGTERM)
        if late:
            deadline = time.monotonic() + 15
            while not all(_state(pid) in ("Z", "") for pid in pids.values()):
                assert time.monotonic() < deadline, srv.log_tail()
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGCONT)
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    log_text = srv.log()
    assert status == 0, log_text
    assert "starting it again" not in log_text, log_text
    assert "all workers stopped" in log_text, log_text
    for k in (0, 1):
        assert f"worker {k} stopped" in log_text, log_text
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"


def _start_group(srv: Server) -> subprocess.Popen[bytes]:
    """``smtprs serve`` in a process group of its own (as a service manager starts it), both workers up."""
    from .harness import smtprs_command

    with srv.log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*smtprs_command(), "serve", "--config", str(srv.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=srv.base,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
    try:
        wait_workers(srv)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise
    return proc


def test_a_group_sigterm_lets_open_sessions_finish(tmp_path: Path) -> None:
    """The workers get the group's SIGTERM and then the supervisor's copy: the
    copy must not be taken as the second signal that stops at once (it was:
    every open transaction got 421 within 0.1 s).  A second SIGTERM to the
    supervisor itself still stops the workers at once."""
    import smtplib

    srv = Server(tmp_path / "group", {"workers": 2, "smtpd": {"shutdown_timeout": 20.0}})
    proc = _start_group(srv)
    try:
        finishing = smtplib.SMTP("127.0.0.1", srv.port, timeout=30)
        finishing.ehlo("client.test")
        finishing.mail(SENDER)
        assert finishing.rcpt(f"alice@{DOMAIN}")[0] == 250
        waiting = smtplib.SMTP("127.0.0.1", srv.port, timeout=30)
        waiting.ehlo("client.test")
        waiting.mail(SENDER)
        assert waiting.rcpt(f"bob@{DOMAIN}")[0] == 250
        os.killpg(proc.pid, signal.SIGTERM)
        srv.wait_log(lambda line: "in a transaction, given 20s to finish" in line)
        time.sleep(1.0)  # well past the supervisor's copy of the signal (its loop looks every 0.1 s)
        code, reply = finishing.data(make_message("finished", "during the drain\r\n"))
        assert code == 250, (code, reply, srv.log_tail())
        finishing.quit()
        assert "stopping now" not in srv.log()
        assert proc.poll() is None  # still draining: waiting's transaction is open
        os.kill(proc.pid, signal.SIGTERM)  # the operator insists
        assert proc.wait(timeout=30) == 0
        log_text = srv.log()
        assert "stop signal again: workers stop now" in log_text and "received SIGQUIT, stopping now" in log_text
        with pytest.raises(smtplib.SMTPException):
            waiting.data(make_message("cut", "too late\r\n"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # the message accepted during the drain is kept: delivered, or in the spool for the next start
    queued = [r.address for env, _ in read_queue(srv.spool_dir) for r in env.recipients]
    assert srv.mail("alice") or queued == [f"alice@{DOMAIN}"], (queued, srv.log_tail())
