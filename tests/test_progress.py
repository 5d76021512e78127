"""Progress lines a user sees in a log file (stdout a pipe, not a terminal): pre-training, a wait on the
cache lock, Ray start, and every ablation cell ending with its name, k/N, elapsed and time left."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import yaml

from bib_ray.progress import ProgressReporter, duration

from helpers import TINY_BASE, run_cli


def test_reporter_lines_and_summary(capsys, monkeypatch):
    clock = iter([0.0, 30.0, 60.0, 90.0, 90.0])
    monkeypatch.setattr("bib_ray.progress.time.monotonic", lambda: next(clock))
    reporter = ProgressReporter()
    reporter.ended("tfbind8/learned/lm1/seed0", "finished", 1, 4, {"normalized_max": 0.5})
    reporter.ended("trial ab_00001", "stopped early", 2, 4)
    reporter.ended("trial ab_00002", "failed", 3, 4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[bib-ray] 1/4 tfbind8/learned/lm1/seed0 finished: normalized_max=0.5000 (elapsed 30s, " \
                       "about 1m30s left)"
    assert lines[1] == "[bib-ray] 2/4 trial ab_00001 stopped early (elapsed 1m00s, about 1m00s left)"
    assert lines[2] == "[bib-ray] 3/4 trial ab_00002 failed (elapsed 1m30s, about 30s left)"
    assert reporter.summary() == "1 trials finished, 1 stopped early, 1 failed (in 1m30s)"
    assert duration(3700) == "1h01m" and duration(9.4) == "9s"


def test_second_process_waiting_on_the_cache_lock_says_so(tmp_path, capsys):
    from bib_ray.cache_store import ensure_entry, lock_path

    entry = tmp_path / "cache" / "embeddings" / "toy.pt"
    entry.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from filelock import FileLock
        lock = FileLock({str(lock_path(entry))!r}); lock.acquire()
        print("held", flush=True); time.sleep(2); lock.release()""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        value = ensure_entry(entry, "embeddings", lambda tmp: tmp.write_bytes(b"x"), lambda p: p.read_bytes(),
                             task="toy", lm="lm")
    finally:
        holder.wait(timeout=30)
    assert value == b"x"
    out = capsys.readouterr().out
    assert "[bib-ray] waiting for another process building the embeddings cache entry toy.pt" in out
    assert re.search(r"\[bib-ray\] lock on toy\.pt free after \d+ s", out), out


def test_ablation_prints_each_cell_with_k_of_n_to_a_pipe(tmp_path):
    plan = {"name": "progress_plan", "base": TINY_BASE, "variants": ["fixed", "learned"], "adaptive_eta": [False],
            "baseline": False, "seeds": [0], "lm_seeds": [0, 1], "concurrency": 2}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    proc = run_cli(["ablate", "plan.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                    "--storage", str(tmp_path / "runs"), "--output", str(tmp_path / "report")], cwd=tmp_path,
                   env={"BIB_RAY_CACHE": str(tmp_path / "cache")}, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = proc.stdout.splitlines()
    assert any(line.startswith("[bib-ray] pre-training the default LM for tfbind8") for line in out), out
    assert any(re.match(r"\[bib-ray\] pre-training tfbind8 LM seed [01] step \d+/20 .*elapsed", line) for line in out)
    assert any(line.startswith("[bib-ray] starting Ray") for line in out), out
    assert any(line.startswith("[bib-ray] Ray is up (elapsed") for line in out), out
    cell = re.compile(r"\[bib-ray\] (\d)/4 (tfbind8/(?:fixed|learned)/lm[01]/seed0) finished: normalized_max=\S+.* "
                      r"\(elapsed \d+(?:m\d\ds)?s?(?:, about \S+ left)?\)$")
    ended = [cell.match(line) for line in out if cell.match(line)]
    assert sorted(int(m.group(1)) for m in ended) == [1, 2, 3, 4], out
    assert sorted(m.group(2) for m in ended) == ["tfbind8/fixed/lm0/seed0", "tfbind8/fixed/lm1/seed0",
                                                "tfbind8/learned/lm0/seed0", "tfbind8/learned/lm1/seed0"]
    assert "left" in next(m.group(0) for m in ended if m.group(1) == "1")
    assert "[bib-ray] ablation: 4 cells finished, 0 stopped early, 0 failed" in proc.stdout


def test_run_prints_pre_training_to_a_pipe(tmp_path):
    spec = {**TINY_BASE, "engine": {**TINY_BASE["engine"], "steps": 2, "designs": 4}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    proc = run_cli(["run", "--config", "run.yaml", "--output", str(tmp_path / "out")], cwd=tmp_path,
                   env={"BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[bib-ray] pre-training tfbind8")]
    assert len(steps) == 10 and steps[-1].startswith("[bib-ray] pre-training tfbind8 LM seed 0 step 20/20"), steps
