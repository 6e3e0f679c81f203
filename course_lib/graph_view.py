"""A recorded graph as a learner can read it: one line per tensor operation, with names and shapes.

``print(traced.code)`` shows a trace as calls into submodules (``(classifier).forward(...)``), and
``traced.graph`` or ``program.graph_module.print_readable()`` bury the operations under constants,
attribute lookups and source locations. ``graph_steps`` keeps only the operations: what each one
computes, from which values (weights by their ``state_dict`` name), and the shape it produced.
It reads a TorchScript trace (its inlined graph) and a ``torch.export`` program alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GraphStep", "format_steps", "graph_steps"]


@dataclass(frozen=True)
class GraphStep:
    """One operation: ``output = op(inputs)``, and the output's shape (a str for a symbolic size)."""

    output: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int | str, ...] | None

    def __str__(self) -> str:
        shape = "" if self.shape is None else "[" + ", ".join(map(str, self.shape)) + "]"
        return f"{shape:22s} {self.output} = {self.op}({', '.join(self.inputs)})"


def _fx_steps(program: torch.export.ExportedProgram) -> list[GraphStep]:
    signature = program.graph_signature
    names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    steps = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        # Only the tensors an operation reads; literal settings (strides, eps) are left out.
        args = [names.get(a.name, a.name) for a in node.args if isinstance(a, torch.fx.Node)]
        value = node.meta.get("val")
        shape = (
            tuple(d if isinstance(d, int) else str(d) for d in value.shape)
            if hasattr(value, "shape")
            else None
        )
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        steps.append(GraphStep(node.name, op, tuple(args), shape))
    return steps


def _attribute_path(value: torch._C.Value) -> str | None:
    """``features.0.weight`` for a chain of ``prim::GetAttr`` nodes, else None."""
    parts = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        parts.append(node.s("name"))
        node = node.input().node()
    return ".".join(reversed(parts)) if parts else None


def _ts_steps(module: torch.jit.ScriptModule) -> list[GraphStep]:
    steps = []
    for node in module.inlined_graph.nodes():
        if not node.kind().startswith("aten::"):
            continue
        out = node.output()
        sizes = out.type().sizes() if isinstance(out.type(), torch._C.TensorType) else None
        inputs = tuple(
            _attribute_path(v) or v.debugName()
            for v in node.inputs()
            if isinstance(v.type(), torch._C.TensorType)
        )
        steps.append(
            GraphStep(
                out.debugName(),
                node.kind().removeprefix("aten::"),
                inputs,
                tuple(sizes) if sizes else None,
            )
        )
    return steps


def graph_steps(recorded: torch.jit.ScriptModule | torch.export.ExportedProgram) -> list[GraphStep]:
    """The tensor operations of a TorchScript trace or a ``torch.export`` program, in order.

    Taught in notebooks/06b_export_in_depth.ipynb (the traced graph, then the exported one).
    """
    if isinstance(recorded, torch.export.ExportedProgram):
        return _fx_steps(recorded)
    if isinstance(recorded, torch.jit.ScriptModule):
        return _ts_steps(recorded)
    raise TypeError(
        f"graph_steps needs a TorchScript module or an ExportedProgram, got {type(recorded).__name__}"
    )


def format_steps(steps: list[GraphStep]) -> str:
    """One line per step: the output's shape, then ``name = op(tensor inputs)``.

    Taught in notebooks/06b_export_in_depth.ipynb.
    """
    return "\n".join(str(step) for step in steps)
