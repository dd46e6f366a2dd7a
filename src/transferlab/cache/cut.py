"""Running part of a network: up to a stage's output (what the cache stores) and from there on
(what trains on it). Nothing here changes the network; the runners call its own modules, so
training them trains it."""

import torch
import torch.fx
from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones import HEAD, Backbone, eval_mode, stage_modules


class _Reached(Exception):
    """Ends a forward pass once the output it was run for exists."""


def run_until(net: nn.Module, module: nn.Module, x: torch.Tensor, its_input: bool) -> torch.Tensor:
    """The forward pass of `net` on `x` as far as `module`: its input or its output, then stop."""
    captured: list[torch.Tensor] = []

    def reached(_module, args, output=None):
        captured.append(args[0] if its_input else output)
        raise _Reached

    if its_input:
        hook = module.register_forward_pre_hook(reached)
    else:
        hook = module.register_forward_hook(reached)
    try:
        net(x)
    except _Reached:
        pass
    finally:
        hook.remove()
    return captured[0]


def cut_module(backbone: Backbone, cut: str) -> nn.Module:
    modules = stage_modules(backbone.stages()[cut])
    if not modules:
        raise ConfigError(f"stage {cut} of {backbone.name} holds no module whose output could be cached")
    return modules[-1]


def forward_until(backbone: Backbone, cut: str, x: torch.Tensor) -> torch.Tensor:
    """What the network computes from images `x` up to the end of stage `cut` (`head`: the
    head's input); nothing after it runs."""
    if cut == HEAD:
        return run_until(backbone.net, backbone.head, x, its_input=True)
    return run_until(backbone.net, cut_module(backbone, cut), x, its_input=False)


def head_dropouts(backbone: Backbone) -> list[nn.Module]:
    """The head stage's Dropout layers: they drop entries of exactly the head's input (in eval
    mode, while the cache is built, they pass it through), so the cached path runs them."""
    return [m for m in stage_modules(backbone.stages()[HEAD])
            if isinstance(m, nn.modules.dropout._DropoutNd)]


def head_blocker(backbone: Backbone) -> str | None:
    """Why the head's cached input would not give what training on images computes, or None."""
    runs = {id(m) for m in [*head_dropouts(backbone), backbone.head]}
    stateful = [type(m).__name__ for m in stage_modules(backbone.stages()[HEAD])
                if id(m) not in runs and any(True for _ in m.buffers())]
    return f"the head stage holds stateful layers {stateful}" if stateful else None


def runner(backbone: Backbone, cut: str, example: torch.Tensor) -> nn.Module:
    """What turns the output of `forward_until(cut, ...)` into the network's output. For the head
    cut: the head stage's Dropouts, the head, and whatever the forward pass does with the head's
    output (a conv head's maps pooled and flattened), found by running `example` (one image)."""
    if cut != HEAD:
        return tail(backbone, cut_module(backbone, cut), cut)
    captured: list[torch.Tensor] = []
    hook = backbone.head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with torch.no_grad(), eval_mode(backbone.net):
            output = backbone.net(example[None].to(next(backbone.net.parameters()).device))
    finally:
        hook.remove()
    after = [] if output is captured[0] else [tail(backbone, backbone.head, HEAD)]
    return nn.Sequential(*head_dropouts(backbone), backbone.head, *after)


class _StageTracer(torch.fx.Tracer):
    """Traces through containers but keeps every stage module whole, so a stage's output is one
    node of the graph."""

    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return id(module) in self.leaves or super().is_leaf_module(module, qualified_name)


def tail(backbone: Backbone, after: nn.Module, label: str) -> nn.Module:
    """The network after module `after` (the end of stage `label`), as a module taking that
    module's output: the forward pass traced with torch.fx (every stage module a leaf) and cut
    there. Refused when something after the cut reads anything computed before it (a skip
    connection)."""
    net = backbone.net
    path = next(n for n, m in net.named_modules() if m is after)
    leaves = {id(m) for items in backbone.stages().values() for m in stage_modules(items)}
    try:
        graph = _StageTracer(leaves).trace(net)
    except Exception as err:  # fx raises many types on untraceable Python
        raise ConfigError(f"{backbone.name} cannot be traced to cut it after {label}: {err}") from None
    [cut_node] = [n for n in graph.nodes if n.op == "call_module" and n.target == path]
    downstream, stack = set(), [cut_node]
    while stack:
        for user in stack.pop().users:
            if user not in downstream:
                downstream.add(user)
                stack.append(user)
    rest = torch.fx.Graph()
    copied = {cut_node: rest.placeholder("features")}
    for node in graph.nodes:  # in execution order
        if node not in downstream:
            continue
        for needed in node.all_input_nodes:
            if needed in copied:
                continue
            # Parameters and buffers, and optional forward arguments left at their default
            # (timm's attention mask), do not depend on the images.
            optional = needed.op == "placeholder" and bool(needed.args)
            if needed.op != "get_attr" and not optional:
                raise ConfigError(f"{backbone.name} cannot run from the output of {label}: "
                                  f"{node.name} also reads {needed.name}, computed before it")
            copied[needed] = rest.node_copy(needed)
        copied[node] = rest.node_copy(node, copied.__getitem__)
    return torch.fx.GraphModule(net, rest)
