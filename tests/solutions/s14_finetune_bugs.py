"""Reference solutions of exercises/14_finetune_bugs.ipynb (the notebook has np and torch)."""

import torch


def freeze_bn(model):
    class Frozen(torch.nn.Module):
        """A batch-norm layer as a fixed affine map: buffers only, nothing for train() to undo."""

        def __init__(self, bn):
            super().__init__()
            self.eps = bn.eps
            for name in ("weight", "bias", "running_mean", "running_var"):
                self.register_buffer(name, getattr(bn, name).detach().clone())

        def forward(self, x):
            scale = self.weight / torch.sqrt(self.running_var + self.eps)
            return x * scale + (self.bias - self.running_mean * scale)

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, name, Frozen(child))


def make_loader(dataset, batch_size, seed):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       drop_last=True,
                                       generator=torch.Generator().manual_seed(seed))


def average_models(models, batches):
    import copy

    averaged = copy.deepcopy(models[0])
    with torch.no_grad():
        for name, p in averaged.named_parameters():
            p.copy_(sum(dict(m.named_parameters())[name] for m in models) / len(models))
    bns = [m for m in averaged.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # the plain average over the batches
    averaged.train()
    with torch.no_grad():
        for xb in batches:
            averaged(xb)
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    return averaged.eval()
