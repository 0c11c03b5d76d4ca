"""Reference solutions of exercises/08_find_the_bug.ipynb."""

import torch


def predict(model, x):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def recalibrate_bn(model, batches):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for xb in batches:
            model(xb)
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
    model.eval()
