"""Tests of bench/mfu.py: the FLOPs count per trained token and the table it prints.

Run: python3 -m unittest bench/test_mfu.py   (stdlib only, from the repository root)
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mfu  # noqa: E402

# bench/gpu.sh's default shape.
CFG = {"vocab": 32000, "hidden": 1280, "layers": 24, "heads": 20, "intermediate": 3456,
       "batch": 8, "seq": 512}
# Products: 24 · (4 · 1280² + 3 · 1280 · 3456) + 1280 · 32000 parameters.
N = 24 * (4 * 1280 * 1280 + 3 * 1280 * 3456) + 1280 * 32000
ATTENTION = 12 * 24 * 512 * 1280


class FlopsTest(unittest.TestCase):
    def test_full_counts_six_flops_per_product_parameter_plus_attention(self):
        self.assertEqual(N, 516_751_360)
        self.assertEqual(mfu.flops_per_token(CFG, "full"), 6 * N + ATTENTION)

    def test_lora_skips_the_weight_gradients(self):
        self.assertEqual(mfu.flops_per_token(CFG, "lora"), 4 * N + ATTENTION)

    def test_table_reports_mfu_against_the_given_peak(self):
        rows = [
            {"impl": "llamaduo", "mode": "full", "dtype": "bf16", "config": CFG,
             "tokens_per_second": 100_000, "peak_rss_mib": 900, "final_loss": 10.4},
            {"impl": "pytorch", "mode": "full", "dtype": "bf16", "config": CFG,
             "tokens_per_second": 50_000, "gpu_peak_mib": 20_000, "final_loss": 10.4},
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write("\n".join(json.dumps(r) for r in rows) + "\n")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            sys.argv = ["mfu.py", f.name, "1000"]
            mfu.main()
        os.unlink(f.name)
        tflops = 100_000 * (6 * N + ATTENTION) / 1e12
        self.assertIn(f"| full | llamaduo | bf16 | 100,000 | {tflops:.1f} | {tflops / 10:.1f}% |",
                      out.getvalue())
        self.assertIn("20,000 MiB GPU", out.getvalue())


if __name__ == "__main__":
    unittest.main()
