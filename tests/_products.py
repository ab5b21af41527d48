"""A dispatch-mode recorder of every tensor x tensor product (convolution, matmul, elementwise mul)
for the addition-only tests; written independently of spikeformers.analysis.energy, which it checks."""

from torch.utils._python_dispatch import TorchDispatchMode
import torch


class ProductRecorder(TorchDispatchMode):
    """Calls ``describe(op_name, a, b)`` for the two operands of each product whose operands are
    both non-scalar tensors, and keeps what it returns unless that is None."""

    OPS = {"convolution", "mm", "bmm", "mul", "addmm", "baddbmm"}

    def __init__(self, describe):
        super().__init__()
        self.describe = describe
        self.records = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__.lstrip("_")
        if name in self.OPS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if name in ("addmm", "baddbmm"):  # the bias / accumulator is not a product operand
                tensors = tensors[1:3]
            tensors = tensors[:2]
            if len(tensors) == 2 and all(t.dim() > 0 for t in tensors):  # skip constant scalings
                record = self.describe(name, *tensors)
                if record is not None:
                    self.records.append(record)
        return func(*args, **(kwargs or {}))
