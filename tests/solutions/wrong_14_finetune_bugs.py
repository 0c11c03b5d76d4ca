"""Planted mistakes in exercises/14_finetune_bugs.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    # the script's own versions
    ("q1", """
def freeze_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.eval()
            m.requires_grad_(False)
    return model
""", "undoing bn.eval()"),
    ("q1", """
def freeze_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.track_running_stats = False
    return model
""", "still require grad"),
    ("q2", """
def make_loader(dataset, batch_size, seed):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))
""", "last batch holds one example"),
    ("q2", """
def make_loader(dataset, batch_size, seed):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, drop_last=True)
""", "shuffle them"),
    ("q3", """
import copy
def average_models(models, batches):
    averaged = copy.deepcopy(models[0])
    state = {k: sum(m.state_dict()[k] for m in models) / len(models)
             for k in averaged.state_dict() if k.endswith(("weight", "bias", "mean", "var"))}
    averaged.load_state_dict(state, strict=False)
    return averaged.eval()
""", "averaged the models' running statistics"),
]
