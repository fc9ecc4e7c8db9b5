"""``replace_hyper_connections``: a transformers DeepSeek-V4 model's hyper-connection
modules replaced by ``DeepseekV4Connection`` / ``DeepseekV4Head``."""

from torch import nn

from ._modules import DeepseekV4Connection, DeepseekV4Head

_REPLACEMENTS = {"DeepseekV4HyperConnection": DeepseekV4Connection,
                 "DeepseekV4HyperHead": DeepseekV4Head}


def replace_hyper_connections(model):
    """Replace, in place, every ``DeepseekV4HyperConnection`` and ``DeepseekV4HyperHead``
    submodule of ``model`` (a transformers DeepSeek-V4 model; matched by class name,
    transformers is not imported) by ``DeepseekV4Connection`` / ``DeepseekV4Head``,
    which hold the *same* Parameter objects (``state_dict`` keys and values unchanged,
    optimizers keep working) and return what the replaced modules returned, computed
    by mhc_array's kernels forward and backward. Returns the number of modules
    replaced (0 for a model without them; a second call replaces nothing)::

        model = DeepseekV4ForCausalLM.from_pretrained(...)
        mhc_array.torch.replace_hyper_connections(model)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    targets = [(name, m) for name, m in model.named_modules()
               if type(m).__name__ in _REPLACEMENTS]
    for name, m in targets:
        new = _REPLACEMENTS[type(m).__name__].from_module(m)
        if not name:
            raise TypeError("model is itself a hyper-connection module; pass the model "
                            "that contains it")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
    return len(targets)
