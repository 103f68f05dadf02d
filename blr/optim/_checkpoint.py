"""The checkpoint format of the :mod:`blr.optim` optimizers.

A ``state_dict`` is torch's (``"state"``: per-parameter tensors keyed by the parameter's index
over the param groups; ``"param_groups"``: the hyperparameters, the step counter and the
parameters' indices) plus a ``"blr"`` header: the optimizer's class name, the format version,
the seed, the number of draws taken, the states of the random generators and the count of
skipped steps — all a bit-exact resume needs. The weight-perturbation optimizers add the
counters of their counter-based noise (``"counters"``: [key, next draw] per bucket) and keep
their per-parameter state as views of flat buffers (:func:`save_buckets`,
:func:`load_buckets`).

Loading checks everything before it changes anything: a state_dict of another class (or not of
this library), another number of param groups or parameters, missing state or other shapes
raise a ValueError that says what differs.
"""

from __future__ import annotations

from typing import Any

import torch

FORMAT = 1


def header(opt: Any) -> dict[str, Any]:
    """The ``"blr"`` entry of ``opt``'s state_dict: class, format, seed, draws, generators and
    skipped steps."""
    return {
        "optimizer": type(opt).__name__,
        "format": FORMAT,
        "seed": opt._seed,
        "draws": opt._draws,
        "generators": {str(d): g.get_state() for d, g in opt._generators.items()},
        "skipped_steps": opt.skipped_steps,
    }


def check_layout(opt: Any, state_dict: Any) -> dict[str, Any]:
    """The header of ``state_dict`` after checking that it comes from ``opt``'s class and has
    ``opt``'s param groups and parameter counts (ValueError otherwise)."""
    meta = state_dict.get("blr") if isinstance(state_dict, dict) else None
    name = type(opt).__name__
    if not isinstance(meta, dict) or meta.get("optimizer") != name:
        found = meta.get("optimizer") if isinstance(meta, dict) else "not a blr.optim one"
        raise ValueError(f"state_dict is not from blr.optim.{name} (found: {found})")
    groups = state_dict["param_groups"]
    if len(groups) != len(opt.param_groups):
        raise ValueError(
            f"state_dict has {len(groups)} param groups, this optimizer has {len(opt.param_groups)}"
        )
    for i, (g, mine) in enumerate(zip(groups, opt.param_groups)):
        if len(g["params"]) != len(mine["params"]):
            raise ValueError(
                f"param group {i} has {len(g['params'])} parameters in the state_dict and "
                f"{len(mine['params'])} here"
            )
    return meta


def check_entry(entry: Any, names: Any, index: int, param_shape: tuple, shape: tuple) -> None:
    """One parameter's state: the keys ``names``, each tensor (but ``"step"``) of ``shape``."""
    if entry is None or set(entry) != set(names):
        raise ValueError(
            f"state_dict lacks the state {sorted(names)} of a parameter of shape {param_shape}"
        )
    for k, v in entry.items():
        if k != "step" and tuple(v.shape) != shape:
            raise ValueError(
                f"state_dict['state'][{index}]['{k}'] has shape {tuple(v.shape)}, the "
                f"parameter {shape}"
            )


def restore_header(opt: Any, meta: dict[str, Any]) -> None:
    """Seed, draws, generator states and skipped steps from a checked header."""
    opt._seed = int(meta["seed"])
    opt._draws = int(meta.get("draws", 0))
    opt._generators = {}
    for dev, gstate in meta["generators"].items():
        opt._generator(torch.device(dev)).set_state(gstate)
    opt.skipped_steps = int(meta.get("skipped_steps", 0))


# --------------------------------------------------------------------------- flat-buffer state
def save_buckets(opt: Any) -> dict[str, Any]:
    """The state_dict of a :class:`~blr.optim.SamplingOptimizer`: each bucket's flat buffers cut
    into per-parameter clones, the param groups, the header and the noise counters."""
    groups = opt._all_buckets()
    index, state, packed = {}, {}, []
    for group in opt.param_groups:
        g = {k: v for k, v in group.items() if k != "params"}
        ids = []
        for p in group["params"]:
            index.setdefault(id(p), len(index))
            ids.append(index[id(p)])
        g["params"] = ids
        packed.append(g)
    for buckets in groups:
        for b in buckets:
            for name in b.state_names:
                for p, v in zip(b.params, b.param_state(name)):
                    state.setdefault(index[id(p)], {})[name] = v.detach().clone()
    meta = header(opt)
    # counter-based noise of fused kernels: (key, next draw) per bucket
    meta["counters"] = [
        [[0, 0] if b.counter is None else [b.counter.seed, b.counter.draws] for b in bs]
        for bs in groups
    ]
    return {"state": state, "param_groups": packed, "blr": meta}


def load_buckets(opt: Any, state_dict: dict[str, Any]) -> None:
    """Restore :func:`save_buckets`' output into ``opt`` (same class and layout; checked first)."""
    meta = check_layout(opt, state_dict)
    groups = state_dict["param_groups"]
    buckets = opt._all_buckets()
    ids = {}
    for g, mine in zip(groups, opt.param_groups):
        for k, p in zip(g["params"], mine["params"]):
            ids[id(p)] = k
    state = state_dict["state"]
    for bucket_list in buckets:  # check everything before writing anything
        for b in bucket_list:
            for p, local_shape in zip(b.params, b.shapes):
                # the local shard if sharded
                check_entry(
                    state.get(ids[id(p)]), b.state_names, ids[id(p)], tuple(p.shape),
                    tuple(local_shape),
                )  # fmt: skip
    with torch.no_grad():
        for group, bucket_list in zip(opt.param_groups, buckets):
            for b in bucket_list:
                for name in b.state_names:
                    torch._foreach_copy_(
                        b.param_state(name), [state[ids[id(p)]][name] for p in b.params]
                    )
                if not b.alias:  # (an aliased bucket's mean was copied into the parameters)
                    b.write_params(opt._center(group, b))
    for g, mine in zip(groups, opt.param_groups):
        for k, v in g.items():
            if k != "params":
                mine[k] = v
    restore_header(opt, meta)
    opt._seed_resolved = True  # every rank loads the same seed
    opt._rank_generators = {}
    for bucket_list, counters in zip(buckets, meta.get("counters", [])):
        for b, (key, draws) in zip(bucket_list, counters):
            if b.counter is not None:
                b.counter.seed, b.counter.draws = int(key), int(draws)
    opt._reset_samples()
