"""Regional torch.compile: each repeated transformer block is compiled once and the compiled code
serves all of them (diffusers' `compile_repeated_blocks`, the blocks named by `_repeated_blocks`).

The compiled block is reused across steps, guidance passes and windows as long as the shapes stay
the same; a window with another latent frame count, or another number of people, recompiles once
unless `dynamic=True`.
"""

from __future__ import annotations


def compile_blocks(transformer, dynamic: bool | None = None, fullgraph: bool = False, mode: str | None = None,
                   backend="inductor") -> dict:
    """Compiles the repeated blocks of `transformer` in place; returns {"compile": ...} for the sidecar."""
    kwargs = {"fullgraph": fullgraph, "dynamic": dynamic, "backend": backend}
    if mode:
        kwargs["mode"] = mode
    transformer.compile_repeated_blocks(**kwargs)
    return {"compile": {"blocks": list(transformer._repeated_blocks), "dynamic": dynamic,
                        "backend": backend if isinstance(backend, str) else getattr(backend, "__name__", "custom")}}


class CountingBackend:
    """A torch.compile backend that counts the graphs it is handed and runs them eagerly (to check
    that a model compiles once and is not recompiled across steps and windows)."""

    def __init__(self):
        self.graphs = 0
        self.__name__ = "counting"

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def unique_graphs() -> int:
    """Graphs dynamo compiled in this process (torch._dynamo's counters)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
