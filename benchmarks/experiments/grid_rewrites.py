"""Experiment: rewrites of the softmax grid's training step that keep every pair.

    python -m benchmarks.experiments.grid_rewrites [--batch=1024 --candidates=2048]

The shipped step scores the whole [B, C] grid of a batch's users against its
shared candidates: each branch's first layer is already split into a user
half and a candidate half (`FeedbackTower.planes`), so what remains per pair
is the branches' ReLU planes, the fusion layer's product over them and the
head. This times the same arithmetic, forward and backward, on random
tensors of the shipped shapes (4 branches of 8 units, fusion to 8 units),
with nothing else in the step, in three forms:

- `materialized`: every [units, B, C] plane written whole, as the library does;
- `user_blocks_<n>`: the grid cut into blocks of n users, each block's
  logits under `tf.recompute_grad` (its planes are rebuilt in the backward
  pass, one block at a time, so a block's planes can stay in cache). The
  softmax is per row, so the cut is exact;
- `bfloat16`: the planes and products in bfloat16 (not exact; the CPU has
  bfloat16 matrix units);

each also compiled whole with XLA. Every form's gradients are checked
against the materialized float32 ones. Writes
benchmarks/results/grid_rewrites.{json,md}.

A research variant: the library ships the materialized float32 step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.normpath(os.path.join(HERE, "..", "results"))
BRANCHES, UNITS = 4, 8


class Grid:
    """The grid's per-pair arithmetic with random weights: user and candidate
    halves of each branch's first layer, ReLU, fusion (ReLU), head."""

    def __init__(self, batch: int, candidates: int, seed: int = 0):
        g = tf.random.Generator.from_seed(seed)
        self.users = [g.normal([batch, UNITS]) for _ in range(BRANCHES)]
        self.items = [g.normal([candidates, UNITS]) for _ in range(BRANCHES)]
        self.first_user = [tf.Variable(0.3 * g.normal([UNITS, UNITS])) for _ in range(BRANCHES)]
        self.first_item = [tf.Variable(0.3 * g.normal([UNITS, UNITS])) for _ in range(BRANCHES)]
        self.first_bias = [tf.Variable(tf.zeros([UNITS])) for _ in range(BRANCHES)]
        self.fusion = tf.Variable(0.3 * g.normal([BRANCHES * UNITS, UNITS]))
        self.fusion_bias = tf.Variable(tf.zeros([UNITS]))
        self.head = tf.Variable(g.normal([UNITS]))
        self.labels = tf.one_hot(tf.range(batch), candidates)
        self.variables = (
            self.first_user
            + self.first_item
            + self.first_bias
            + [self.fusion, self.fusion_bias, self.head]
        )

    def logits(self, users, items, dtype=tf.float32):
        """[U, C] logits of user rows `users` (per branch [U, units]) against `items`."""

        def cast(x):
            return tf.cast(x, dtype)

        planes = []
        for t in range(BRANCHES):
            u = tf.matmul(cast(self.first_user[t]), cast(users[t]), True, True)
            u += cast(self.first_bias[t])[:, None]  # [units, U]
            i = tf.matmul(cast(self.first_item[t]), cast(items[t]), True, True)  # [units, C]
            planes.append(tf.nn.relu(u[:, :, None] + i[:, None, :]))
        x = tf.concat(planes, 0)
        shape = tf.shape(x)
        flat = tf.matmul(cast(self.fusion), tf.reshape(x, [BRANCHES * UNITS, -1]), True)
        fused = tf.nn.relu(flat + cast(self.fusion_bias)[:, None])
        out = tf.tensordot(cast(self.head), fused, axes=1)
        return tf.cast(tf.reshape(out, shape[1:]), tf.float32)

    def step(self, form: str):
        """A function returning the gradients of the mean softmax loss."""
        watched = self.users + self.items

        def loss_of(logits):
            return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(self.labels, logits))

        if form.startswith("user_blocks_"):
            block = int(form.rsplit("_", 1)[1])
            blocked = tf.recompute_grad(
                lambda *a: self.logits(list(a[:BRANCHES]), list(a[BRANCHES:]))
            )

            def logits():
                rows = range(0, self.users[0].shape[0], block)
                return tf.concat(
                    [blocked(*[u[s : s + block] for u in self.users], *self.items) for s in rows],
                    0,
                )

        else:
            dtype = tf.bfloat16 if form == "bfloat16" else tf.float32

            def logits():
                return self.logits(self.users, self.items, dtype)

        def step():
            with tf.GradientTape() as tape:
                tape.watch(watched)
                loss = loss_of(logits())
            return tape.gradient(loss, self.variables + watched)

        return step


def seconds(fn, repeats: int) -> float:
    fn()
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    float(tf.reduce_sum(out[0]))
    return (time.perf_counter() - started) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--candidates", type=int, default=2048, help="B + shared negatives")
    parser.add_argument("--blocks", default="16,32,128")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(RESULTS, "grid_rewrites"))
    args = parser.parse_args()

    grid = Grid(args.batch, args.candidates)
    forms = ["materialized"] + [f"user_blocks_{b}" for b in args.blocks.split(",")] + ["bfloat16"]
    reference = tf.function(grid.step("materialized"))()
    rows = []
    for form in forms:
        for xla in (False, True):
            fn = tf.function(grid.step(form), jit_compile=xla)
            grads = fn()
            error = max(
                float(tf.reduce_max(tf.abs(a - b)) / (tf.reduce_max(tf.abs(b)) + 1e-12))
                for a, b in zip(grads, reference)
            )
            s = seconds(fn, args.repeats)
            rows.append(
                {
                    "form": form,
                    "xla": xla,
                    "seconds_per_step": round(s, 4),
                    "examples_per_second": round(args.batch / s, 1),
                    "max_relative_gradient_error": float(f"{error:.2g}"),
                }
            )
            print(rows[-1], flush=True)
    base = rows[0]["seconds_per_step"]
    for r in rows:
        r["vs_materialized"] = round(base / r["seconds_per_step"], 2)
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "tensorflow": tf.__version__,
        "batch": args.batch,
        "candidates": args.candidates,
        "branches": BRANCHES,
        "units": UNITS,
        "rows": rows,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(
            "# The softmax grid's step, rewritten\n\n"
            "Command: `python -m benchmarks.experiments.grid_rewrites`\n\n"
            f"Grid {args.batch} x {args.candidates}, {BRANCHES} branches of {UNITS} units, "
            f"fusion to {UNITS}; forward and backward of the per-pair arithmetic alone, "
            f"random tensors; TensorFlow {tf.__version__}, {os.cpu_count()} cores. "
            "Gradient error: the largest difference from the materialized float32 "
            "gradients, relative to each gradient's largest entry.\n\n"
            "| form | XLA | seconds a step | examples/s | vs materialized | gradient error |\n"
            "|---|---|---|---|---|---|\n"
        )
        for r in rows:
            f.write(
                f"| {r['form']} | {'yes' if r['xla'] else 'no'} | {r['seconds_per_step']} | "
                f"{r['examples_per_second']:.0f} | {r['vs_materialized']}x | "
                f"{r['max_relative_gradient_error']} |\n"
            )
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
