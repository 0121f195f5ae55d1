"""Tests of bench/table.py's operator rows on fabricated result directories.

Run: python3 -m unittest bench/test_table.py   (stdlib only, from the repository root)
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import table  # noqa: E402

RUN = {
    "bench": "operator_load", "migrations": 1000, "seconds_to_all_first_jobs": 48.7,
    "p50_seconds": 25.6, "p90_seconds": 45.6, "first_job_seconds": 0.5, "created_seconds": 9.7,
    "creates_per_second": 103.5, "workers": 8, "operator_peak_rss_mib": 72.6,
    "operator_rss_mib_end": 72.6, "operator_cpu_seconds": 7.1, "operator_cpu_seconds_settled": 7.1,
    "reconciliations": 3017, "reconcile_failures": 0, "decisions": {"wait": 2017, "start_stage": 1000},
    "reconcile_p50_ms": 91.9, "reconcile_p99_ms": 510.0, "operator_warn_lines": 0,
    "status_lost_current": 0, "cpu_seconds": {"kube-apiserver": 40.0, "etcd": 5.0, "load-client": 1.7},
    "other_processes_cpu_seconds": 3.2, "binary": "release", "loadavg_before": "0.9 1.0 1.4", "loadavg_after": "2.9 1.6 1.6",
}


def render(files):
    """table.py's output for a results dir holding `files` (name -> text) and a minimal
    results.jsonl."""
    with tempfile.TemporaryDirectory() as d:
        files = {"results.jsonl": "", **files}
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        buf = io.StringIO()
        argv = sys.argv
        sys.argv = ["table.py", d]
        try:
            with contextlib.redirect_stdout(buf):
                table.main()
        finally:
            sys.argv = argv
        return buf.getvalue()


def operator_lines(text):
    return [l for l in text.splitlines() if l.startswith("| operator")]


SYNTHESIS = """synthesis request rate, simulated teacher with 200 ms latency, limit 600 RPM, concurrency 8, 20 s window
| scheme | requests/min | share of limit | client CPU per request | 429 from the server |
|---|---|---|---|---|
| llamaduo (token bucket) | 596.9 | 99.5% | 574 µs | 0 |
| reference (batch of 8, sleep 2.4 s), measured | 184.3 | 30.7% | 222 µs | 0 |
| llamaduo client in the reference's pattern (batch of 8, sleep 2.4 s) | 184.2 | 30.7% | 281 µs | |
| reference, computed W/(latency+sleep) | 184.6 | 30.8% | | |
"""


class SynthesisRows(unittest.TestCase):
    def test_rate_cpu_and_the_client_alone(self):
        rows = [l for l in render({"synthesis.md": SYNTHESIS}).splitlines() if l.startswith("| synthesis")]
        self.assertEqual(len(rows), 4, rows)
        self.assertIn("| 99.5% | 30.7% |", rows[0])
        self.assertIn("computed 30.8%", rows[0])
        self.assertIn("| 574 µs | 222 µs | 2.59x |", rows[1])
        self.assertIn("batch-and-sleep pattern", rows[2])
        self.assertIn("| 281 µs | 222 µs | 1.27x |", rows[2])
        self.assertIn("| 0 | 0 |", rows[3])


class OperatorRows(unittest.TestCase):
    def test_medians_of_the_runs(self):
        runs = [RUN, {**RUN, "seconds_to_all_first_jobs": 68.0, "p50_seconds": 43.9, "p90_seconds": 64.8,
                      "operator_peak_rss_mib": 72.5, "reconcile_p99_ms": 971.3},
                {**RUN, "seconds_to_all_first_jobs": 50.0, "p50_seconds": 30.0, "p90_seconds": 47.0}]
        out = render({"operator_load.json": "".join(json.dumps(r) + "\n" for r in runs)})
        rows = operator_lines(out)
        self.assertEqual(len(rows), 3, out)
        self.assertIn("| 1,000 migrations", rows[0].replace("operator: ", "| "))
        self.assertIn("| 30.0 / 47.0 / 50.0 |", rows[0])
        self.assertTrue(rows[0].endswith("| 3 |"), rows[0])
        self.assertIn("| 72.6 / 72.6 / 7.1 |", rows[1])
        self.assertIn("(release build)", rows[1])
        self.assertIn("| 91.9 / 510.0 |", rows[2])
        self.assertIn("kube-apiserver CPU over the same time 40.0 s", out)
        self.assertIn("by other processes per run: 3.2, 3.2, 3.2", out)
        self.assertNotIn("not measured", out)
        self.assertNotIn("lost their current run", out)

    def test_lost_status_is_noted(self):
        out = render({"operator_load.json": json.dumps({**RUN, "status_lost_current": 2}) + "\n"})
        self.assertIn("lost their current run", out)
        self.assertIn("[2]", out)

    def test_without_results_the_row_says_not_measured(self):
        rows = operator_lines(render({}))
        self.assertEqual(len(rows), 1)
        self.assertIn("not measured", rows[0])
        self.assertTrue(rows[0].endswith("| 0 |"), rows[0])

    def test_skipped_and_failed_runs_say_why(self):
        rows = operator_lines(render({"operator_load.json": "",
                                      "operator_load.skipped": "control-plane binaries not cached\n"}))
        self.assertEqual(len(rows), 1)
        self.assertIn("not measured: control-plane binaries not cached", rows[0])
        out = render({"operator_load.json": json.dumps(RUN) + "\n",
                      "operator_load.failed": "run 2 failed (exit 1), see operator_load.2.log\n"})
        self.assertEqual(len(operator_lines(out)), 3)
        self.assertIn("Note: operator load: run 2 failed", out)

    def test_other_rows_unchanged(self):
        quick = {"quickstart.time.json": json.dumps({"wall_ms": 123000, "exit_code": 0}),
                 "quickstart.json": json.dumps({"phase": "Succeeded", "rounds": [{}], "serviceTokens": {"input": 5, "output": 7}})}
        with_op = render({**quick, "operator_load.json": json.dumps(RUN) + "\n"})
        without = render(quick)
        strip = lambda t: [l for l in t.splitlines() if not l.startswith("| operator") and "operator load" not in l]  # noqa: E731
        self.assertEqual(strip(with_op), strip(without))
        self.assertIn("| quickstart end to end: wall time s", with_op)

    def test_quickstart_reads_the_status_llamaduo_run_json_nests(self):
        status = {"phase": "Succeeded", "rounds": [{}, {}],
                  "best": {"round": 2, "scores": {"mean": 87.5}},
                  "serviceTokens": {"input": 56149, "output": 27136}}
        out = render({"quickstart.time.json": json.dumps({"wall_ms": 90000, "exit_code": 0}),
                      "quickstart.json": json.dumps({"name": "quickstart", "status": status})})
        self.assertIn("phase Succeeded, 2 rounds, best round 2 (mean 87.5); exit 0) | 90 |", out)
        self.assertIn("| quickstart: service tokens spent (input + output) | 83,285 |", out)


if __name__ == "__main__":
    unittest.main()
