"""Which operators to keep in fp32 when an INT8 recipe flips too many decisions: a one-at-a-time ranking.

Each node the recipe would quantize is quantized alone (onnxruntime's ``nodes_to_quantize``) and scored by how far
the logits move from the fp32 graph's on unlabeled selection texts (mean KL divergence of the class
distributions: flips alone are too rare to rank single nodes). The recipe is then applied with the ``k`` most
sensitive nodes left in fp32 (``nodes_to_exclude``), ``k`` the smallest of a grid whose selection agreement
reaches the target. Everything is chosen on the selection texts; the texts a result is reported on are not used.

Written here because onnxruntime ships no mixed-precision search for its quantizers (``qdq_loss_debug`` compares
the activations of a QDQ model, it does not choose), and neural-compressor, which has one, is not a dependency.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from finlight.errors import FinlightError

# what onnxruntime's dynamic quantizer quantizes when op_types_to_quantize is None (its IntegerOps registry,
# restricted to the operators of a transformer encoder), each only with a constant weight input
DYNAMIC_OP_TYPES = ("MatMul", "Attention", "EmbedLayerNormalization", "Gather")


def candidate_nodes(path: str, op_types: Optional[Sequence[str]] = None) -> list[str]:
    """Names of the nodes of ``path`` of ``op_types`` (default `DYNAMIC_OP_TYPES`) that read a constant float
    matrix (a weight): the ones a dynamic recipe can quantize, in graph order."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    weights = {init.name for init in graph.initializer  # float matrices: not shapes, indices or scalars
               if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 2}
    wanted = tuple(op_types or DYNAMIC_OP_TYPES)
    nodes = [n.name for n in graph.node if n.op_type in wanted and any(i in weights for i in n.input)]
    if len(set(nodes)) != len(nodes):
        raise FinlightError(f"{path}: node names are not unique; cannot select nodes by name")
    return nodes


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(logits)), in nats."""
    p, q = softmax(reference.astype(np.float64)), softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


@dataclass
class Sensitivity:
    """One node quantized alone: its KL from the fp32 logits and its label flips, on the selection feeds."""

    node: str
    kl: float
    flips: int


@dataclass
class KeepFp32Choice:
    """The outcome of `choose_keep_fp32`: the nodes left in fp32 and the grid it was chosen on."""

    keep_fp32: list[str]
    k: int
    agreement: float
    target: float
    reached: bool
    grid: dict[int, float] = field(default_factory=dict)

    def record(self) -> dict:
        return {"keep_fp32": self.keep_fp32, "k": self.k, "selection_agreement": self.agreement,
                "target": self.target, "reached": self.reached,
                "grid": {str(k): v for k, v in sorted(self.grid.items())}}


def rank_nodes(fp32_path: str, quantize: Callable[[str, str, Optional[list[str]], list[str]], None],
               run: Callable[[str], np.ndarray], nodes: Sequence[str],
               progress: Optional[Callable[[str], None]] = None) -> list[Sensitivity]:
    """Quantize each of ``nodes`` alone and rank by KL from the fp32 logits, most sensitive first.

    ``quantize(source, target, only, exclude)`` writes an INT8 graph of ``source`` quantizing only the nodes
    ``only`` (None: all) minus ``exclude``; ``run(path)`` returns the selection logits of a graph."""
    reference = run(fp32_path)
    ranking = []
    with tempfile.TemporaryDirectory() as folder:
        for i, node in enumerate(nodes):
            path = os.path.join(folder, f"single_{i}.onnx")
            quantize(fp32_path, path, [node], [])
            logits = run(path)
            ranking.append(Sensitivity(node, mean_kl(reference, logits),
                                       int(np.sum(logits.argmax(-1) != reference.argmax(-1)))))
            os.remove(path)
            if progress:
                progress(f"{i + 1}/{len(nodes)} {node}: KL {ranking[-1].kl:.2e}, {ranking[-1].flips} flips")
    return sorted(ranking, key=lambda s: (-s.kl, s.node))


def choose_keep_fp32(fp32_path: str, ranking: Sequence[Sensitivity],
                     quantize: Callable[[str, str, Optional[list[str]], list[str]], None],
                     run: Callable[[str], np.ndarray], target: float, ks: Sequence[int] = (0, 1, 2, 3, 4, 6, 8, 12),
                     progress: Optional[Callable[[str], None]] = None) -> KeepFp32Choice:
    """The smallest ``k`` of ``ks`` whose recipe, with the ``k`` top-ranked nodes in fp32, keeps at least
    ``target`` of the fp32 labels on the selection feeds; if none does, the ``k`` of the best agreement (ties:
    the smaller ``k``), marked ``reached=False``."""
    if not 0.0 < target <= 1.0:
        raise FinlightError(f"agreement target {target}: must be in (0, 1]")
    reference = run(fp32_path).argmax(-1)
    grid = {}
    with tempfile.TemporaryDirectory() as folder:
        for k in sorted(set(min(k, len(ranking)) for k in ks)):
            path = os.path.join(folder, f"keep_{k}.onnx")
            quantize(fp32_path, path, None, [s.node for s in ranking[:k]])
            grid[k] = float(np.mean(run(path).argmax(-1) == reference))
            os.remove(path)
            if progress:
                progress(f"{k} nodes in fp32: selection agreement {grid[k]:.4%}")
            if grid[k] >= target:
                break
    k, reached = pick_k(grid, target)
    return KeepFp32Choice([s.node for s in ranking[:k]], k, grid[k], target, reached, grid)


def pick_k(grid: dict[int, float], target: float) -> tuple[int, bool]:
    """From ``{k: selection agreement}``: the smallest ``k`` reaching ``target`` (and True), else the ``k`` of the
    best agreement, the smaller on ties (and False)."""
    if not grid:
        raise FinlightError("pick_k: an empty grid")
    reached = [k for k, a in grid.items() if a >= target]
    if reached:
        return min(reached), True
    return max(grid, key=lambda k: (grid[k], -k)), False
