"""Planted mistakes in exercises/08_find_the_bug.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    # the buggy script as given, and a fix that forgets to restore the mode
    ("q1", """
def predict(model, x):
    with torch.no_grad():
        return model(x)
""", "missing model.eval()"),
    ("q1", """
def predict(model, x):
    with torch.no_grad():
        return model(x)
""", "updated by inference data"),
    ("q1", """
def predict(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)
""", "left in eval mode"),
    ("q2", """
def recalibrate_bn(model, batches):
    model.train()
    with torch.no_grad():
        for xb in batches:
            model(xb)
    model.eval()
""", "stale statistics dominate"),
]
