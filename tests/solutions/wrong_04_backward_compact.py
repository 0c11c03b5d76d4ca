"""Planted mistakes in exercises/04_backward_compact.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def bn_backward_compact(dy, x, weight, eps=1e-5):
    return weight * dy / np.sqrt(x.var(0) + eps)
""", "misses the paths through the mean and the variance"),
    ("q2", """
def compare_speed(f, g, repeats, clock):
    tf, tg = [], []
    for _ in range(repeats):
        t0 = clock(); f(); t1 = clock(); g(); t2 = clock()
        tf.append(t1 - t0); tg.append(t2 - t1)
    return float(np.mean(tf)), float(np.mean(tg))
""", "drags the mean"),
    ("q2", """
def compare_speed(f, g, repeats, clock):
    out = []
    for fn in (f, g):
        ts = []
        for _ in range(repeats):
            t0 = clock(); fn(); ts.append(clock() - t0)
        out.append(float(np.median(ts)))
    return tuple(out)
""", "not interleaved"),
]
